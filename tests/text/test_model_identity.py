"""The text model's identity (what the cache's fingerprint records) and the local-folder / hub-id rule."""

from __future__ import annotations

import shutil

import pytest

from cxrpipe.text import model as model_mod
from cxrpipe.text.model import TextModelError, is_local, model_identity


def _folder(path, weights: bytes, config: str = '{"hidden_size": 8}'):
    path.mkdir(parents=True)
    (path / "config.json").write_text(config)
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text("{}")
    return path


def test_local_identity_follows_the_weights_not_the_path(tmp_path):
    a = _folder(tmp_path / "a", b"\x01" * 4096)
    same = model_identity(a)
    assert same.startswith("local:") and model_identity(str(a)) == same
    shutil.rmtree(a)
    _folder(a, b"\x02" * 4096)  # other weights, same size, same path
    assert model_identity(a) != same
    shutil.rmtree(a)
    _folder(a, b"\x01" * 4096, config='{"hidden_size": 16}')  # other config
    assert model_identity(a) != same
    shutil.rmtree(a)
    _folder(a, b"\x01" * 4096)  # the very same files again
    assert model_identity(a) == same


def test_what_is_local_and_what_is_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama").mkdir(parents=True)
    assert is_local("models/llama")  # an existing folder with one slash is local, never sent to the hub
    assert is_local("./nope") and is_local("/nope") and is_local("~/nope")
    assert not is_local("meta-llama/Llama-2-7b-hf") and not is_local("gpt2")
    with pytest.raises(TextModelError, match="folder not found"):
        model_identity("./models/other")


def test_hub_ids_resolve_to_a_commit_or_say_why(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert model_identity("org/model", commit) == f"hub:{commit}"  # a commit revision is its own identity
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ref = tmp_path / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text(commit + "\n")
    assert model_identity("org/model") == f"hub:{commit}"  # from the local hub cache, offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TextModelError, match=r"'org/missing'.*did not resolve.*HF_HUB_OFFLINE") as e:
        model_identity("org/missing")
    assert "\n" not in str(e.value)  # one line, no traceback text
    with pytest.raises(TextModelError, match="neither an existing local folder nor a hub id"):
        model_identity("a/b/c")


def test_an_unreachable_hub_says_so_in_one_line(monkeypatch, tmp_path):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(self, repo_id, revision=None, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nlong details")

    monkeypatch.setattr(HfApi, "model_info", no_network)
    with pytest.raises(TextModelError, match=r"did not resolve on the hub: ConnectionError: Failed to resolve") as e:
        model_mod.resolve_hub_commit("org/model")
    assert "long details" not in str(e.value)


def test_embed_stage_says_in_one_line_that_a_hub_id_does_not_resolve(manifest_dir, tmp_path, monkeypatch):
    import yaml
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from cxrpipe.cli import app

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"sections": ["findings"]}, "embed": {"model": "org/no-such-model"}}))
    res = CliRunner().invoke(app, ["embed", "--params", str(params), "--manifest", str(manifest_dir),
                                   "--out", str(tmp_path / "text.h5"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 1
    assert "'org/no-such-model'" in res.output and "did not resolve" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "text.h5").exists()
