"""The pretraining loop end to end on synthetic pairs: outputs, export, exact resume, controlled variants."""

import csv
import dataclasses
import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from cxrpipe.config import build
from cxrpipe.pretrain.data import AugmentConfig, EpochBatches, augment
from cxrpipe.pretrain.retrieval import recall_at_k
from cxrpipe.pretrain.train import CHECKPOINT, PretrainConfig, for_variant, lr_factor, run_pretrain, trains_sentences

from .synthetic import TINY, make_pairs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_cfg(**over) -> PretrainConfig:
    return build(PretrainConfig, {**TINY, "epochs": 2, "batch_size": 8, **over})


def run(tmp, name, prepared, text, cfg, variant="multimodal", **kw):
    out = tmp / name
    m = run_pretrain(cfg, variant, prepared, text, out / "model", metrics_path=out / "metrics.json",
                     plots_dir=out / "plots", **kw)
    return out, m


@pytest.fixture(scope="module")
def full(tmp_path_factory, data):
    return run(tmp_path_factory.mktemp("full"), "a", *data, tiny_cfg())


def test_epoch_batches_shard_and_skip():
    one = list(EpochBatches(20, 8, seed=3, epoch=1))
    assert len(one) == 2 and all(len(b) == 8 for b in one)  # last partial batch dropped
    r0 = list(EpochBatches(20, 8, seed=3, epoch=1, rank=0, world=2))
    r1 = list(EpochBatches(20, 8, seed=3, epoch=1, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1)] == one  # two processes see the one-process global batches
    assert list(EpochBatches(20, 8, seed=3, epoch=1, start=1)) == one[1:]
    assert one != list(EpochBatches(20, 8, seed=3, epoch=2))
    with pytest.raises(ValueError, match="divisible"):
        EpochBatches(20, 8, seed=0, epoch=0, world=3)


def test_augment_deterministic_and_no_flip_by_default():
    img = torch.zeros(1, 16, 16)
    img[:, :, :4] = 1.0  # bright left edge
    a = augment(img, AugmentConfig(), torch.Generator().manual_seed(5))
    assert torch.equal(a, augment(img, AugmentConfig(), torch.Generator().manual_seed(5)))
    for s in range(20):  # never mirrored: the left stays brighter than the right
        a = augment(img, AugmentConfig(), torch.Generator().manual_seed(s))
        assert a[..., :8].mean() > a[..., 8:].mean()
    off = AugmentConfig(rotate=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0, hflip=True)
    flipped = [torch.equal(augment(img, off, torch.Generator().manual_seed(s)), img.flip(-1)) for s in range(20)]
    assert any(flipped) and not all(flipped)


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, total=10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0.1


def test_duplicate_pair_counts_match_the_batches_and_the_closed_form():
    from cxrpipe.pretrain.data import Pair, batch_duplicate_pairs, expected_pairs, group_sizes

    # 40 items: studies 0-4 have two images each (one text row per study), reports of studies 10-15 are one text
    pairs = [Pair(i, i // 2, i // 2) for i in range(10)]
    pairs += [Pair(10 + i, 10 + i, 99 if i < 6 else 10 + i) for i in range(30)]
    g = group_sizes(pairs)
    assert g["same_study"][:6] == [2, 2, 2, 2, 2, 1] and g["same_text"][:3] == [6, 2, 2]
    # closed form, B = 8 of N = 40: same study 5 x C(2,2) = 5 pairs, same text C(6,2) = 15 more
    scale = 8 * 7 / (40 * 39)
    assert expected_pairs(g["same_study"], 40, 8) == pytest.approx(5 * scale)
    out = batch_duplicate_pairs(pairs, 8, seed=0, epochs=300)
    assert out["expected_per_batch"] == pytest.approx({"same_study": 5 * scale, "same_text": 15 * scale})
    # the batches really drawn, counted pair by pair, average to the closed form (300 epochs x 5 batches)
    for k in ("same_study", "same_text"):
        assert out["mean_per_batch"][k] == pytest.approx(out["expected_per_batch"][k], rel=0.1)
    e0 = [[pairs[i] for i, _ in b] for b in EpochBatches(40, 8, seed=0, epoch=0)]
    by_hand = sum(sum(a.study_id == b.study_id for a, b in itertools.combinations(items, 2)) for items in e0) / 5
    assert out["per_epoch"]["same_study"][0] == pytest.approx(by_hand)


def test_recall_at_k_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    # image 0's match (col 0) ranks 1st, image 1's (col 1) 3rd, image 2's (col 2) 3rd
    r = recall_at_k(scores, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert r == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(1 / 3), "recall@3": 1.0}


def test_run_writes_a_timm_encoder_curves_and_metrics(full):
    import timm

    from cxrpipe.encoder import load_encoder

    out, metrics = full
    cfg = json.loads((out / "model" / "config.json").read_text())
    model = timm.create_model(cfg["arch"], pretrained=False, **cfg["kwargs"])
    missing, unexpected = model.load_state_dict(load_file(str(out / "model" / "encoder.safetensors")), strict=False)
    assert missing == [] and unexpected == []
    enc, _ = load_encoder(out / "model")
    assert enc(torch.zeros(2, 1, 32, 32)).shape == (2, 32)
    assert cfg["kwargs"]["in_chans"] == 1 and cfg["variant"] == "multimodal" and cfg["pixel_std"] > 0
    assert not (out / "model" / CHECKPOINT).exists()  # removed after a finished run (keep_checkpoint false)

    steps = list(csv.DictReader((out / "plots" / "loss.csv").open()))
    assert [int(r["step"]) for r in steps] == list(range(1, 7))  # 24 pairs / 8 = 3 steps x 2 epochs
    assert {"loss", "mae_loss", "contrastive_loss", "lr", "grad_norm"} <= set(steps[0])
    epochs = list(csv.DictReader((out / "plots" / "epochs.csv").open()))
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and metrics["steps"] == 6 and metrics["train_pairs"] == 24
    r = metrics["retrieval"]
    # 8 validate images (the lateral one filtered), 7 distinct reports (two studies share one text)
    assert r["n_images"] == 8 and r["n_reports"] == 7 and r["chance@1"] == pytest.approx(1 / 7)
    # (7 reports: R@10 = 1 whatever was learned; learning is tested in test_pretrain_learns.py)
    assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1.0
    assert {"pairs_same_text", "pairs_same_study"} <= set(steps[0])
    dup = metrics["duplicate_pairs"]  # all 24 train reports distinct, one image per study: no duplicate pairs
    assert dup["mean_per_batch"] == {"same_study": 0.0, "same_text": 0.0} and len(dup["per_epoch"]["same_text"]) == 2


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, data, full):
    ref_out, ref_metrics = full
    cfg = tiny_cfg()
    out, m = run(tmp_path, "b", *data, cfg, max_steps=4)  # "crash" mid-way through epoch 2
    assert m is None and (out / "model" / CHECKPOINT).exists()
    ckpt = torch.load(out / "model" / CHECKPOINT, weights_only=True)  # plain tensors and primitives
    assert ckpt["step"] == 4 and ckpt["config"]["variant"] == "multimodal"
    out, m = run(tmp_path, "b", *data, cfg, resume=True)
    a = load_file(str(ref_out / "model" / "encoder.safetensors"))
    b = load_file(str(out / "model" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "plots" / "loss.csv").read_text() == (ref_out / "plots" / "loss.csv").read_text()
    assert (out / "plots" / "epochs.csv").read_text() == (ref_out / "plots" / "epochs.csv").read_text()
    assert m["retrieval"] == ref_metrics["retrieval"] and m["final_epoch"] == ref_metrics["final_epoch"]


def test_resume_ignores_a_checkpoint_of_other_settings(tmp_path, data, caplog):
    cfg = tiny_cfg(epochs=1)
    run(tmp_path, "c", *data, cfg, max_steps=1)
    other = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, margin=2.0))
    out, m = run(tmp_path, "c", *data, other, resume=True)
    assert "loss.margin: checkpoint=1.0 now=2.0" in caplog.text and "starting from scratch" in caplog.text
    ref, _ = run(tmp_path, "d", *data, other)  # the same as a fresh run of the new settings
    a = load_file(str(out / "model" / "encoder.safetensors"))
    b = load_file(str(ref / "model" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "plots" / "loss.csv").read_text() == (ref / "plots" / "loss.csv").read_text()


def test_mae_variant_is_blind_to_the_text(tmp_path, data):
    """The mae variant (weight_text forced to 0) trains the very same encoder whatever the reports say; the
    multimodal variant with the same seed does not."""
    cfg = tiny_cfg(epochs=1)
    assert for_variant(cfg, "mae").loss.weight_text == 0.0 and for_variant(cfg, "multimodal") == cfg
    other_text = make_pairs(tmp_path / "other", seed=1)[1]  # same images, other report embeddings
    enc = {}
    for name, text, variant in [("m1", data[1], "mae"), ("m2", other_text, "mae"), ("mm", data[1], "multimodal")]:
        out, _ = run(tmp_path, name, data[0], text, cfg, variant=variant)
        enc[name] = load_file(str(out / "model" / "encoder.safetensors"))
    assert all(torch.equal(enc["m1"][k], enc["m2"][k]) for k in enc["m1"])
    assert not all(torch.equal(enc["m1"][k], enc["mm"][k]) for k in enc["m1"])


def test_only_variants_with_a_text_term_train_sentences():
    """One rule for the stage and the run: the sentence term needs its weight and a text term (never mae, nor
    the two-step flow's continued), whatever sentence_weight says."""
    on = dataclasses.replace(tiny_cfg(), loss=dataclasses.replace(tiny_cfg().loss, sentence_weight=0.5))
    two_step = dataclasses.replace(on, flow="two_step")
    assert trains_sentences(on, "multimodal") and trains_sentences(on, "shuffled")
    assert trains_sentences(two_step, "multimodal") and not trains_sentences(two_step, "continued")
    assert not trains_sentences(on, "mae") and not trains_sentences(two_step, "mae")
    off = dataclasses.replace(on, loss=dataclasses.replace(on.loss, sentence_weight=0.0))
    no_text = dataclasses.replace(on, loss=dataclasses.replace(on.loss, weight_text=0.0))
    assert not trains_sentences(off, "multimodal") and not trains_sentences(no_text, "multimodal")


def test_cross_attention_pool_with_infonce_runs(tmp_path, data):
    cfg = tiny_cfg(epochs=1, pool={**TINY["pool"], "kind": "cross"}, loss={"kind": "infonce"})
    _, m = run(tmp_path, "x", *data, cfg)
    assert m["steps"] == 3 and "temperature" in m["final_epoch"]
    assert m["retrieval"]["n_reports"] == 7


def test_stage_cli_in_process(tmp_path, monkeypatch):
    """`cxrpipe pretrain` with a params file: the text cache is checked against the embed params; the sentence
    cache is read from where stage embed_sentences writes it, and only when the sentence term is on."""
    embed = pytest.importorskip("cxrpipe.text.embed")
    pytest.importorskip("cxrpipe.data.prepare")
    import typer
    import yaml
    from typer.testing import CliRunner

    from stages.pretrain import main

    params = {
        "data": {"sections": ["findings", "impression"]},
        "embed": {"model": "tiny-llm", "quantization": "fp32"},
        "pretrain": {**TINY, "epochs": 1, "batch_size": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ecfg = embed.EmbedConfig(model="tiny-llm", quantization="fp32")
    prepared, text = make_pairs(
        tmp_path, fingerprint=lambda texts: embed.expected_fingerprint(ecfg, texts, ("findings", "impression"),
                                                               strict_identity=False)
    )
    app = typer.Typer()
    app.command()(main)
    args = ["--params", str(tmp_path / "params.yaml"), "--prepared", str(prepared), "--text-cache", str(text),
            "--out", str(tmp_path / "models" / "mae"), "--metrics", str(tmp_path / "m.json"),
            "--plots", str(tmp_path / "plots"), "--variant", "mae"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "mae" / "encoder.safetensors").exists()
    assert json.loads((tmp_path / "m.json").read_text())["weight_text"] == 0.0
    # other embed params than the cache was made with: refused, naming the field
    params["embed"]["prompt"] = "Findings:"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "prompt" in result.output + str(result.exception)
    # the sentence term on, no --sentence-cache: the default is the cache dvc.yaml's embed_sentences writes
    from cxrpipe.check import SENTENCE_CACHE

    monkeypatch.chdir(tmp_path)  # the default is relative to the repository root: none here
    params["embed"].pop("prompt")
    params["pretrain"]["loss"] = {**params["pretrain"].get("loss", {}), "sentence_weight": 0.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args[args.index("--variant") + 1] = "multimodal"
    result = CliRunner().invoke(app, args)
    message = result.output + str(result.exception)
    assert result.exit_code != 0 and f"{SENTENCE_CACHE} not found" in message and "pipeline.sentences" in message
    # ... while mae, which never reads sentences, trains with the term on and never builds their source
    import cxrpipe.text.sentences as sentences_module

    def refuse(*_args, **_kwargs):
        raise AssertionError("the sentence source was built for a text-free variant")

    monkeypatch.setattr(sentences_module, "sentence_source", refuse)
    args[args.index("--variant") + 1] = "mae"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + str(result.exception)


def test_augment_on_device_trains_like_the_loader_and_resumes_exactly(tmp_path, data, full):
    """`augment_on: device`: the batch is augmented after it reaches the device with each sample's own
    loader draws, so the run follows the loader run closely (not bit-identically: another resampling grid),
    and its resume is exact."""
    ref_out, _ = full
    cfg = tiny_cfg(data={"augment_on": "device"})
    out, m = run(tmp_path, "dev", *data, cfg)
    loader_rows = list(csv.DictReader((ref_out / "plots" / "loss.csv").open()))
    device_rows = list(csv.DictReader((out / "plots" / "loss.csv").open()))
    first = [(float(a["mae_loss"]), float(b["mae_loss"])) for a, b in zip(loader_rows, device_rows)][0]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.02 * first[0]  # same draws, other grid
    # the images really are augmented on the device: without augmentation the first loss differs more
    off = {"rotate": 0.0, "translate": 0.0, "scale": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0}
    _, _ = run(tmp_path, "noaug", *data, tiny_cfg(data={"augment": off}), max_steps=1)
    plain = float(next(csv.DictReader((tmp_path / "noaug" / "plots" / "loss.csv").open()))["mae_loss"])
    assert abs(plain - first[0]) > abs(first[1] - first[0])
    # crash and resume: identical to the uninterrupted device run
    cut, none = run(tmp_path, "dev2", *data, cfg, max_steps=4)
    assert none is None
    cut, m2 = run(tmp_path, "dev2", *data, cfg, resume=True)
    a = load_file(str(out / "model" / "encoder.safetensors"))
    b = load_file(str(cut / "model" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and m2["final_epoch"] == m["final_epoch"]
