"""The `random` reference is pretraining's step 0, exported like the others; its stage and pixels' stage run."""

from __future__ import annotations

import json

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from cxrpipe.encoder import load_encoder
from cxrpipe.evaluate.probe.references import build_random_encoder, write_random_encoder
from cxrpipe.pretrain.data import PretrainDataConfig
from cxrpipe.pretrain.mae import MAEConfig, MaskedAutoencoder

TINY = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_random_encoder_is_the_mae_init_with_that_seed():
    torch.manual_seed(7)
    expect = _state(MaskedAutoencoder(TINY).encoder)
    torch.manual_seed(123)  # whatever the global RNG holds before: the seed decides
    _assert_same(_state(build_random_encoder(TINY, 7)), expect)
    other = _state(build_random_encoder(TINY, 8))
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], expect["blocks.0.attn.qkv.weight"])


def test_random_encoder_is_pretrainings_step_zero():
    """run_pretrain: set_seed(cfg.seed), then PretrainModel, whose first module is the MAE."""
    from accelerate.utils import set_seed

    from cxrpipe.pretrain.losses import LossConfig
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.pooling import PoolConfig

    set_seed(5)
    model = PretrainModel(TINY, PoolConfig(dim=16, num_heads=2), LossConfig(), text_hidden=24)
    _assert_same(_state(build_random_encoder(TINY, 5)), _state(model.encoder))


def test_exported_random_encoder_round_trips(tmp_path):
    cfg = write_random_encoder(TINY, PretrainDataConfig(pixel_mean=0.4, pixel_std=0.2), 3, tmp_path / "random")
    enc, saved = load_encoder(tmp_path / "random")  # timm.create_model + strict load
    # save_encoder adds a human-readable `description` of the architecture and timm's local-dir keys; the rest
    # is the config as given
    from cxrpipe.encoder import timm_config

    added = {"description", *timm_config(saved, 0)}
    assert {k: v for k, v in saved.items() if k not in added} == json.loads(json.dumps(cfg))
    assert saved["variant"] == "random" and "2 blocks" in saved["description"]
    assert saved["params"]["seed"] == 3 and saved["params"]["trained"] is False
    assert (saved["pixel_mean"], saved["pixel_std"]) == (0.4, 0.2)
    _assert_same(_state(enc), _state(build_random_encoder(TINY, 3)))


def _cli(main) -> typer.Typer:
    app = typer.Typer()
    app.command()(main)
    return app


@pytest.mark.slow
def test_reference_stages_run_and_compare_reports_them(synthetic, tiny_params, tmp_path):
    """random_encoder -> finetune (fc and finetune), pixels, then compare's "references" block and table."""
    from stages.compare import main as compare_main
    from stages.finetune import main as finetune_main
    from stages.pixels import main as pixels_main
    from stages.random_encoder import main as random_main

    params = {
        **tiny_params,
        "pretrain": {"seed": 4, "model": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                          "num_heads": 2, "decoder_embed_dim": 16, "decoder_num_heads": 2}},
        "pixels": {"size": 16, "c_grid": [0.1, 1.0], "max_iter": 500},
    }
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    runner = CliRunner()
    metrics, preds = tmp_path / "metrics", tmp_path / "predictions"
    res = runner.invoke(_cli(random_main), ["--params", str(pfile), "--out", str(tmp_path / "random")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_cli(random_main), ["--params", str(pfile), "--out", str(tmp_path / "r9"), "--seed", "9"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r9" / "config.json").read_text())["params"]["seed"] == 9
    encoders = {"mae": synthetic["mae"], "multimodal": synthetic["multimodal"], "random": tmp_path / "random"}
    for name, enc in encoders.items():
        for protocol in ("fc", "finetune"):
            res = runner.invoke(_cli(finetune_main), [
                "--params", str(pfile), "--encoder", str(enc), "--protocol", protocol,
                "--prepared", str(synthetic["prepared"]), "--out", str(metrics / f"{name}-{protocol}.json"),
                "--predictions", str(preds), "--plots", str(tmp_path / "plots"),
            ])
            assert res.exit_code == 0, res.output
    assert json.loads((metrics / "random-fc.config.json").read_text())["encoder_seed"] == 4
    res = runner.invoke(_cli(pixels_main), ["--params", str(pfile), "--prepared", str(synthetic["prepared"]),
                                            "--out", str(metrics / "pixels.json"), "--predictions", str(preds)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_cli(compare_main), [
        "--params", str(pfile), "--metrics", str(metrics), "--predictions", str(preds),
        "--out", str(metrics / "comparison.json"), "--report", str(tmp_path / "comparison.md"),
        "--plots", str(tmp_path / "roc"),
    ])
    assert res.exit_code == 0, res.output
    comp = json.loads((metrics / "comparison.json").read_text())
    refs = comp["references"]
    for protocol in ("fc", "finetune"):
        r = refs[protocol]
        assert {"random", "pixels", "mae_vs_random", "multimodal_vs_random", "mae_vs_pixels"} <= set(r)
        assert r["mae_vs_random"]["delta_mauc"] == pytest.approx(comp[protocol]["mae"]["mauc"] - r["random"]["mauc"])
        lo, hi = r["mae_vs_random"]["delta_ci95"]
        assert lo <= r["mae_vs_random"]["delta_mauc"] <= hi and 0 <= r["mae_vs_random"]["p_value"] <= 1
        m = json.loads((metrics / f"random-{protocol}.json").read_text())
        assert r["random"]["mauc"] == pytest.approx(m["study"]["mauc"], abs=1e-12)
    assert refs["pixels"]["mauc"] == pytest.approx(json.loads((metrics / "pixels.json").read_text())["study"]["mauc"])
    assert refs["fc"]["pixels"] == refs["finetune"]["pixels"] == refs["pixels"]  # protocol-independent
    assert comp["seeds"]["seeds"] == ["default"]  # the synthetic mae encoder records no seed
    md = (tmp_path / "comparison.md").read_text()
    assert "| protocol | pixels | random | mae | multimodal | mae - random" in md
    assert "| random-fc |" in md and "| pixels |" in md  # accuracy table lists the references too
