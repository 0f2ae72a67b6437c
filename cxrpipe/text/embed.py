"""Stage one: run the frozen language model once over every distinct prompted report -> ``text.h5``.

How a run goes (every process of an ``accelerate launch`` does the same planning, so they agree without
talking):

1. studies.csv -> ``apply_prompt(text, embed.prompt)`` -> distinct texts, in a canonical order (by the
   smallest study id that uses them), so 1 and N processes write the same file. Studies with an empty text
   are left out (counted).
2. Tokenize (no special tokens; BOS prepended by hand only when the tokenizer itself would add one, and its
   hidden state dropped: LLaMA parks massive activations there). Cut to ``embed.max_tokens`` (counted),
   keeping the prompt's tokens at the end.
3. Plan: length-grouped batches under ``embed.batch_tokens`` padded slots, gathered into parts of about
   ``embed.part_tokens`` tokens. The plan is hashed with everything that changes its result.
4. Each process takes a token-balanced share of the parts; a finished part is written atomically (temp +
   ``os.replace``) into ``<out>.parts/`` (small HDF5 files). Parts already there (same plan hash) are skipped:
   this is what makes a run killed at any moment (SIGKILL too) resumable.
5. After a barrier, rank 0 writes the final ``text.h5`` with ``write_linked_text_cache`` (atomic): an index
   whose ``embeddings`` / ``token_ids`` datasets are HDF5 virtual datasets over the part files, which stay
   in ``<out>.parts/`` as the cache's data. Nothing is copied (the demo's cache used to exist twice on disk
   while it was assembled); rows are numbered in the parts' order. HDF5 is never written incrementally.

The layer: ``embed.layer = -1`` is the last hidden state, after the model's final RMSNorm (well scaled);
any other index ``k`` is ``hidden_states[k]`` (0 = token embeddings), the raw residual stream, whose scale
grows with depth; values beyond float16's range are clipped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxrpipe import __version__, provenance
from cxrpipe.config import to_dict
from cxrpipe.io import respect_umask
from cxrpipe.data.manifest import read_studies
from cxrpipe.data.reports import apply_prompt
from cxrpipe.text.batching import Batch, balanced_split, group_into_parts, length_grouped_batches, padding_fraction
from cxrpipe.text.cache import (MAX_LINKED_PARTS, PART_SUFFIX, Fingerprint, hash_texts, read_part,
                                write_linked_text_cache, write_part)
from cxrpipe.text.store import EXTRA_ARRAYS, StoreDtype, encode

log = logging.getLogger(__name__)

FLOAT16_MAX = 65504.0
# Test hook: seconds to sleep after each part (lets a test SIGKILL a run part-way at a known pace).
DELAY_ENV = "CXRPIPE_EMBED_PART_DELAY_S"


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """params section ``embed``."""

    # local folder (the demo's data/models/text-model) or hub id (meta-llama/Llama-2-7b-hf)
    model: str = "data/models/text-model"
    # hub revision (commit / tag) of a hub model; "" = default branch or a local folder
    revision: str = ""
    # nf4 (bitsandbytes 4-bit, bf16 compute) | bf16 | fp32; never fp16 (LLaMA's activations overflow it)
    quantization: Literal["nf4", "bf16", "fp32"] = "nf4"
    # hidden state to keep: -1 = last, after the final norm; k = hidden_states[k] (0 = token embeddings)
    layer: int = -1
    # appended to every cleaned report (see cxrpipe.data.reports.apply_prompt); recorded in the cache
    prompt: str = ""
    # stored tokens per text at most (BOS not counted); longer reports are cut, the prompt kept (counted)
    max_tokens: int = 512
    # padded token slots per forward pass (batch_size x longest); bounds activation memory
    batch_tokens: int = 4096
    # real tokens per part file: the unit of resume and of work across processes
    part_tokens: int = 32768
    # how each token's hidden state is stored: float16 | bfloat16 | int8 (see cxrpipe.text.store)
    store_dtype: StoreDtype = StoreDtype.float16


@dataclasses.dataclass(frozen=True)
class EmbedSummary:
    """What a run did; written as JSON beside the cache."""

    n_studies: int  # studies with a non-empty text, mapped to a cached row
    n_empty: int  # studies left out because their cleaned text is empty
    n_texts: int  # distinct prompted texts = rows of the cache
    n_tokens: int  # stored token rows (offsets[-1])
    n_truncated: int  # texts cut at max_tokens
    n_clipped: int  # values clipped to float16's range
    hidden_size: int
    padding_fraction: float  # padded slots / all computed slots of the plan
    n_parts: int
    n_parts_reused: int  # parts found from an earlier, interrupted run
    n_processes: int
    seconds: float  # wall time of this process's share of the forward passes
    tokens_per_second: float  # this process's real tokens / seconds (0 when it had nothing left to do)
    config: dict


def expected_fingerprint(cfg: EmbedConfig, texts: Sequence[str], sections: Sequence[str],
                         strict_identity: bool = True) -> Fingerprint:
    """The fingerprint a cache made with these params has. ``texts``: the ``text`` column of every row of
    studies.csv (cleaned, without the prompt); ``sections``: params ``data.sections``.

    ``strict_identity``: resolve the model's identity (hub commit / local folder hash) or raise
    :class:`~cxrpipe.text.model.TextModelError` (embed); False = record it only when it is at hand offline,
    else "" = not checked (readers such as pretrain, which must not need the model or the network)."""
    from cxrpipe.text.model import known_model_identity, model_identity

    identity = model_identity if strict_identity else known_model_identity
    return Fingerprint(
        model=cfg.model,
        revision=cfg.revision,
        model_identity=identity(cfg.model, cfg.revision),
        quantization=cfg.quantization,
        layer=cfg.layer,
        prompt=cfg.prompt,
        sections=tuple(sections),
        max_tokens=cfg.max_tokens,
        texts_hash=hash_texts(texts),
        package_version=__version__,
        store_dtype=StoreDtype(cfg.store_dtype).value,
    )


def recorded_fingerprint(expected: Fingerprint, device: Any) -> Fingerprint:
    """``expected`` plus what a writer records beside the params: the CPU kernels, on a CPU run (the numbers
    depend on them: cxrpipe.cpu, docs/benchmarks.md)."""
    import torch

    from cxrpipe.cpu import kernels_in_use

    on_cpu = torch.device(device).type == "cpu"
    return dataclasses.replace(expected, cpu_kernels=kernels_in_use() if on_cpu else "")


@dataclasses.dataclass(frozen=True)
class TextTable:
    """Distinct prompted texts in canonical order and the study -> row map."""

    texts: list[str]
    study_ids: list[int]
    study_rows: list[int]
    n_empty: int


def distinct_texts(study_ids: Sequence[int], texts: Sequence[str], prompt: str) -> TextTable:
    """Prompted, deduplicated texts; rows ordered by the smallest study id using them (independent of the
    input order and of the number of processes)."""
    row_of: dict[str, int] = {}
    out_texts: list[str] = []
    sids: list[int] = []
    rows: list[int] = []
    n_empty = 0
    for sid, text in sorted(zip(study_ids, texts), key=lambda p: int(p[0])):
        if not text.strip():
            n_empty += 1
            continue
        t = apply_prompt(text, prompt)
        if t not in row_of:
            row_of[t] = len(out_texts)
            out_texts.append(t)
        sids.append(int(sid))
        rows.append(row_of[t])
    return TextTable(out_texts, sids, rows, n_empty)


def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int, prompt: str = "",
             chunk: int = 4096) -> tuple[list[np.ndarray], int]:
    """int32 token ids per text (no special tokens), at most ``max_tokens``; returns (ids, number truncated).

    A text that is too long loses the end of its report, not the prompt appended after it (the prompt is
    what the model is asked; its tokens are kept when the text ends with them). In chunks, as numpy:
    Python lists of ints would take ~1 GB at MIMIC-CXR scale.
    """
    suffix = apply_prompt("x", prompt)[1:]  # what apply_prompt appends to any text
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if len(tail) >= max_tokens:
        tail = []
    ids: list[np.ndarray] = []
    n_truncated = 0
    for a in range(0, len(texts), chunk):
        for x in tokenizer(list(texts[a : a + chunk]), add_special_tokens=False)["input_ids"]:
            if len(x) > max_tokens:
                n_truncated += 1
                keep = len(tail) if tail and x[-len(tail) :] == tail else 0
                x = x[: max_tokens - keep] + (x[-keep:] if keep else [])
            ids.append(np.asarray(x, dtype=np.int32))
    return ids, n_truncated


def stop_at_layer(model: Any, layer: int) -> int:
    """Drop the decoder layers that ``hidden_states[layer]`` does not need; returns the layer to read now.

    A decoder's layers run in order, so the state after layer k never depends on the layers above it: a cache of
    a mid-depth layer (``embed.layer`` 16 of LLaMA-2-7b's 32) needs only the first k layers, and the rest are
    dropped before the first batch: stage one's compute scales with k, not with the model's depth. The
    model keeps its first k layers and its final norm becomes the identity, so ``last_hidden_state`` (read as
    layer -1) is exactly the full model's ``hidden_states[layer]`` (same kernels on the same inputs).
    ``layer`` -1 (or the last index) is the last hidden state AFTER the final norm: nothing is dropped.
    """
    import torch

    n = int(model.config.num_hidden_layers)
    if not -(n + 1) <= layer <= n:
        raise ValueError(f"embed.layer {layer} is out of range for {n + 1} hidden states")
    k = layer % (n + 1)  # hidden_states[0] = the token embeddings, hidden_states[i] = the output of layer i
    if k == n:
        return layer
    base = model.base_model
    if not (hasattr(base, "layers") and hasattr(base, "norm")):  # LLaMA-style decoders (LLaMA, Mistral, Qwen)
        raise ValueError(f"embed.layer {layer}: {type(base).__name__} has no `layers` and `norm` to stop at; "
                         "use embed.layer -1")
    del base.layers[k:]
    base.norm = torch.nn.Identity()
    log.info("embed.layer %d: the model keeps %d of its %d decoder layers", layer, k, n)
    return -1


def pad_batch(batch: Sequence[Sequence[int]], bos: int | None, pad: int) -> tuple[Any, Any, list[int], int]:
    """``(input_ids, attention_mask, ends, start)`` of one batch of token ids, right-padded with ``pad``.

    BOS (when the tokenizer adds one) sits at position 0, so text ``i``'s tokens are ``start..ends[i]-1``;
    with right padding and causal attention no text ever sees the padding.
    """
    import torch

    start = int(bos is not None)
    ends = [start + len(s) for s in batch]
    input_ids = torch.full((len(batch), max(ends)), pad, dtype=torch.long)  # [n, width], right-padded
    mask = torch.zeros_like(input_ids)
    for i, s in enumerate(batch):
        if start:
            input_ids[i, 0] = bos
        input_ids[i, start : ends[i]] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : ends[i]] = 1
    return input_ids, mask, ends, start


def embed_batch(model: Any, batch: Sequence[Sequence[int]], layer: int, bos: int | None, pad: int) -> list[Any]:
    """Hidden states of one batch: a float32 tensor ``[L_i, hidden]`` per text, BOS removed, no padding.

    Texts are padded on the right (``pad_batch``): the result equals an unpadded forward up to float
    rounding. bf16 autocast on CUDA for bf16/nf4 models (fp32 stays fp32).
    """
    import torch

    device = model.device
    input_ids, mask, ends, start = pad_batch(batch, bos, pad)  # BOS is dropped from the output
    autocast = device.type == "cuda" and model.dtype != torch.float32
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        # the base model: the LM head (vocab x hidden per token) is never needed
        out = model.base_model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            output_hidden_states=layer != -1,
            use_cache=False,
        )
        h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # [n, width, hidden]
    h = h.float().cpu()
    if not torch.isfinite(h[mask.bool()]).all():
        raise FloatingPointError("the language model produced NaN/inf hidden states (fp16 weights? use bf16)")
    return [h[i, start:end] for i, end in enumerate(ends)]


def to_float16(x: np.ndarray) -> tuple[np.ndarray, int]:
    """float16 copy of ``x`` with out-of-range values clipped; returns (array, number clipped)."""
    n_clipped = int(np.count_nonzero(np.abs(x) > FLOAT16_MAX))
    return np.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16), n_clipped


# ---------------------------------------------------------------------------------------- plan and parts


@dataclasses.dataclass(frozen=True)
class Plan:
    batches: list[Batch]  # rows are text rows; max_len counts BOS
    parts: list[list[int]]  # batch indices per part
    hash: str

    def part_rows(self, k: int) -> list[int]:
        return [r for j in self.parts[k] for r in self.batches[j].rows]

    def part_cost(self, k: int) -> int:
        return sum(self.batches[j].padded_tokens for j in self.parts[k])


def make_plan(cfg: EmbedConfig, fingerprint: Fingerprint, ids: Sequence[Sequence[int]], bos: int | None) -> Plan:
    """Batches and parts, and a hash of everything a part's content depends on (so a part left by a run
    with other settings, other token ids or another model folder is never taken)."""
    lengths = [len(x) + (bos is not None) for x in ids]
    batches = length_grouped_batches(lengths, cfg.batch_tokens)
    parts = group_into_parts(batches, lengths, cfg.part_tokens)
    h = hashlib.sha256()
    h.update(json.dumps(fingerprint.to_attrs(), sort_keys=True).encode())
    # the fingerprint holds the model's identity; the code key: parts made by other code are not reused
    h.update(json.dumps([cfg.batch_tokens, cfg.part_tokens, bos, provenance.code_key("embed")]).encode())
    for x in ids:
        h.update(np.asarray(x, dtype=np.int32).tobytes() + b"|")
    h.update(json.dumps([[list(batches[j].rows) for j in p] for p in parts]).encode())
    return Plan(batches, parts, h.hexdigest()[:16])


def parts_dir(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".parts")


def part_path(folder: Path, k: int, plan_hash: str) -> Path:
    return folder / f"part-{k:06d}-{plan_hash}{PART_SUFFIX}"


def link_parts(out_path: Path, files: Sequence[Path], table: "TextTable", fingerprint: Fingerprint) -> tuple[int, int]:
    """Write ``out_path`` as a linked cache over the part files (rows renumbered in the parts' order, which
    the plan fixes: 1 and N processes give the same file). Returns (values clipped, hidden size)."""
    layouts, new_row, offsets, n_clipped, hidden = [], {}, [0], 0, 0
    for f in files:
        layout, rows, part_offsets, clipped = read_part(f)
        for r, n in zip(rows, np.diff(part_offsets)):
            new_row[int(r)] = len(new_row)
            offsets.append(offsets[-1] + int(n))
        n_clipped += clipped
        hidden = int(layout.arrays["embeddings"][1][1]) if layout.n_tokens else hidden
        layouts.append(layout)
    if sorted(new_row) != list(range(len(table.texts))):
        raise RuntimeError(f"embed: parts hold {len(new_row)} texts, expected {len(table.texts)}")
    study_rows = [new_row[r] for r in table.study_rows]
    write_linked_text_cache(out_path, layouts, np.asarray(offsets), table.study_ids, study_rows, fingerprint, hidden)
    return n_clipped, hidden


# ---------------------------------------------------------------------------------------------------- run


def process_state() -> Any:
    """accelerate's ``PartialState`` of this process. Without CUDA it must be told ``cpu=True``, or processes
    started by ``accelerate launch --multi_gpu`` / ``torchrun`` on a CPU machine would not join a (gloo)
    process group and would each do all the work."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_embed(cfg: EmbedConfig, manifest_dir: str | Path, out_path: str | Path, sections: Sequence[str],
              progress: bool = True) -> EmbedSummary:
    """Embed every study's prompted report into ``out_path`` (see the module doc). Every process of an
    ``accelerate launch`` calls this; only rank 0 writes the final cache. Returns this process's summary."""
    from cxrpipe.text.model import bos_added, load_text_model, load_tokenizer

    state = process_state()
    out_path = Path(out_path)
    studies = read_studies(manifest_dir)
    fingerprint = recorded_fingerprint(expected_fingerprint(cfg, [s.text for s in studies], sections), state.device)
    table = distinct_texts([s.study_id for s in studies], [s.text for s in studies], cfg.prompt)
    if not table.texts:
        raise ValueError(f"{manifest_dir}: no study has a non-empty report text")
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    bos = bos_added(tokenizer)
    ids, n_truncated = tokenize(tokenizer, table.texts, cfg.max_tokens, cfg.prompt)
    plan = make_plan(cfg, fingerprint, ids, bos)
    if len(plan.parts) > MAX_LINKED_PARTS:  # before hours of forward passes, not after
        raise ValueError(f"embed: {len(plan.parts)} parts; the linked cache holds at most {MAX_LINKED_PARTS}: "
                         f"raise embed.part_tokens (now {cfg.part_tokens})")
    lengths = [len(x) + (bos is not None) for x in ids]
    folder = parts_dir(out_path)
    folder.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        out_path.unlink(missing_ok=True)  # an index over parts about to change; rewritten at the end
        for stale in folder.glob("part-*"):  # other ranks only ever write this plan's parts (and the .safetensors
            if not stale.name.endswith(f"-{plan.hash}{PART_SUFFIX}"):  # parts of an older cxrpipe are stale too)
                stale.unlink()
    mine = balanced_split([plan.part_cost(k) for k in range(len(plan.parts))], state.num_processes)
    mine = mine[state.process_index]
    done = {k for k in range(len(plan.parts)) if part_path(folder, k, plan.hash).exists()}
    state.wait_for_everyone()  # every process has looked before any writes: they agree on what is done
    todo = [k for k in mine if k not in done]
    n_reused = len(done)
    log.info(
        "%d studies -> %d distinct texts (%d empty left out, %d truncated at %d tokens); %d batches in %d parts "
        "(%.1f%% padding); %d parts already done; %d process(es)",
        len(table.study_ids), len(table.texts), table.n_empty, n_truncated, cfg.max_tokens, len(plan.batches),
        len(plan.parts), 100 * padding_fraction(plan.batches, lengths), n_reused, state.num_processes,
    )

    seconds, n_done_tokens = 0.0, 0
    if todo:
        model, _ = load_text_model(cfg.model, cfg.quantization, cfg.revision, device=state.device)
        layer = stop_at_layer(model, cfg.layer)
        seconds, n_done_tokens = _run_parts(model, tokenizer.pad_token_id, bos, layer, ids, plan, todo, folder,
                                            progress and state.is_main_process, StoreDtype(cfg.store_dtype))
    state.wait_for_everyone()

    n_clipped, hidden = 0, 0
    if state.is_main_process:
        files = [part_path(folder, k, plan.hash) for k in range(len(plan.parts))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise RuntimeError(f"embed: parts missing after every process finished: {missing[:5]}")
        n_clipped, hidden = link_parts(out_path, files, table, fingerprint)
        log.info("wrote %s over %d parts in %s: %d texts, %d tokens x %d (%s), %d values clipped", out_path,
                 len(files), folder, len(table.texts), sum(len(x) for x in ids), hidden,
                 StoreDtype(cfg.store_dtype).value, n_clipped)
        if n_clipped:
            log.warning("%d hidden-state values exceeded float16's range and were clipped (embed.layer=%d)",
                        n_clipped, cfg.layer)
    state.wait_for_everyone()
    return EmbedSummary(
        n_studies=len(table.study_ids),
        n_empty=table.n_empty,
        n_texts=len(table.texts),
        n_tokens=sum(len(x) for x in ids),
        n_truncated=n_truncated,
        n_clipped=n_clipped,
        hidden_size=hidden,
        padding_fraction=round(padding_fraction(plan.batches, lengths), 4),
        n_parts=len(plan.parts),
        n_parts_reused=n_reused,
        n_processes=state.num_processes,
        seconds=round(seconds, 3),
        tokens_per_second=round(n_done_tokens / seconds, 1) if seconds else 0.0,
        config=to_dict(cfg),
    )


def _run_parts(model: Any, pad: int, bos: int | None, layer: int, ids: Sequence[Sequence[int]], plan: Plan,
               todo: Sequence[int], folder: Path, progress: bool,
               store: StoreDtype = StoreDtype.float16) -> tuple[float, int]:
    """Compute and write this process's remaining parts; returns (seconds, real tokens done)."""
    from cxrpipe.progress import progress as progress_bar

    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    total = sum(len(ids[r]) for k in todo for r in plan.part_rows(k))
    bar = progress_bar(total=total, unit="tok", desc="embed", enabled=progress, unit_scale=True, smoothing=0.1)
    t0 = time.perf_counter()
    for k in todo:
        rows, embs, n_clipped = [], [], 0
        extra: dict[str, list[np.ndarray]] = {name: [] for name in EXTRA_ARRAYS[store]}
        for j in plan.parts[k]:
            batch = plan.batches[j]
            for r, h in zip(batch.rows, embed_batch(model, [ids[r] for r in batch.rows], layer, bos, pad)):
                enc, c = encode(h.numpy(), store)
                rows.append(r)
                embs.append(enc["embeddings"])
                for name in extra:
                    extra[name].append(enc[name])
                n_clipped += c
            bar.update(sum(len(ids[r]) for r in batch.rows))
        write_part(part_path(folder, k, plan.hash), rows, embs, [ids[r] for r in rows], n_clipped, extra)
        if delay:
            time.sleep(delay)
    bar.close()
    return time.perf_counter() - t0, total

