"""The README's "Use the encoder in your own code" block runs verbatim; preprocess equals the pipeline's path."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Use the encoder in your own code"


def readme_encoder_block() -> str:
    text = README.read_text()
    assert HEADING in text, f"README.md lost its section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no ```python block under {HEADING!r}"
    return blocks[0]


def export_tiny_encoder(out: Path, img_size: int = 32) -> dict:
    """A 2-block ViT exported like the pretrain stage does (perturbed, so a fresh init cannot pass)."""
    import timm

    from cxrpipe.encoder import save_encoder

    kwargs = dict(img_size=img_size, patch_size=8, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                  global_pool="avg", fc_norm=False, class_token=True)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    cfg = {"arch": "vit_tiny_patch16_224", "kwargs": kwargs, "pixel_mean": 0.5, "pixel_std": 0.25,
           "variant": "multimodal"}
    save_encoder(model, out, cfg)
    return cfg


def test_readme_encoder_block_runs_verbatim(tmp_path, monkeypatch):
    from PIL import Image

    export_tiny_encoder(tmp_path / "data" / "models" / "multimodal")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 48), dtype=np.uint8), mode="L").save(tmp_path / "chest.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_encoder_block(), "README.md", "exec"), namespace)  # noqa: S102 - the point of the test
    n_tokens = 1 + (32 // 8) ** 2
    assert tuple(namespace["x"].shape) == (1, 1, 32, 32)
    assert tuple(namespace["pooled"].shape) == (1, 32)
    assert tuple(namespace["tokens"].shape) == (1, n_tokens, 32)
    # pooled = mean of the normed patch tokens (global_pool avg, cls token left out)
    torch.testing.assert_close(namespace["pooled"], namespace["tokens"][:, 1:].mean(1))


def test_preprocess_matches_the_pipeline(tmp_path):
    """Path input = prepare's decode + letterbox then finetune's normalisation; PIL and array inputs agree."""
    from PIL import Image

    from cxrpipe.data.images import load_image
    from cxrpipe.encoder import normalize_uint8, preprocess

    cfg = {"kwargs": {"img_size": 32}, "pixel_mean": 0.4, "pixel_std": 0.2}
    pixels = np.random.default_rng(1).integers(0, 256, (50, 40), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(pixels, mode="L").save(path)
    cache_row = torch.from_numpy(load_image(path, 32))[None]  # what images.h5 holds [1, 32, 32]
    expected = normalize_uint8(cache_row, 0.4, 0.2, (32, 32))
    for given in (path, str(path), Image.open(path), pixels):
        torch.testing.assert_close(preprocess(given, cfg), expected)
    assert preprocess(path, cfg).shape == (1, 1, 32, 32)
    # prepare.image_size (40) bigger than the encoder's input (32): letterbox to 40, then resize, like finetune
    row40 = torch.from_numpy(load_image(path, 40))[None]
    torch.testing.assert_close(preprocess(path, cfg, letterbox_size=40), normalize_uint8(row40, 0.4, 0.2, (32, 32)))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(pixels.astype(np.float32), cfg)


def test_exported_config_describes_the_architecture_and_rebuilds(tmp_path):
    import json

    import timm

    cfg = export_tiny_encoder(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    desc = written["description"]
    assert "2 blocks" in desc and "width 32" in desc and "patch 8 at 32 px" in desc and "4 x 4 patches" in desc
    model = timm.create_model(written["arch"], pretrained=False, **written["kwargs"])  # still works as documented
    assert model.patch_embed.patch_size == (8, 8) and len(model.blocks) == 2
    assert written["arch"] == cfg["arch"]


def test_exported_files_follow_the_umask(tmp_path):
    """safetensors creates 0600 files; the export gets 0666 minus the umask like every other output."""
    old = os.umask(0o002)
    try:
        export_tiny_encoder(tmp_path)
    finally:
        os.umask(old)
    for name in ("encoder.safetensors", "config.json"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o664, f"{name}: {oct(mode)}"


def test_timm_local_dir_reproduces_the_pipelines_features(tmp_path, caplog):
    """`timm.create_model('local-dir:<folder>', pretrained=True)` + timm's own data config and transform give
    exactly cxrpipe's input and features (square images, as the letterbox makes them); before, timm failed
    (KeyError 'architecture') and its default config said 3 channels, 224 px, std 0.5, crop 0.9."""
    import timm
    from PIL import Image

    from cxrpipe.encoder import load_encoder, preprocess

    folder = tmp_path / "multimodal"
    export_tiny_encoder(folder, img_size=32)
    (folder / "text_head.safetensors").write_bytes(b"")  # as pretrain writes it: timm must still pick the encoder
    ours, cfg = load_encoder(folder)
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True)
    data = timm.data.resolve_data_config(model=theirs)
    assert data == {"input_size": (1, 32, 32), "interpolation": "lanczos", "mean": [0.5], "std": [0.25],
                     "crop_pct": 1.0, "crop_mode": "center"}
    transform = timm.data.create_transform(**data)
    ours.eval(), theirs.eval()
    rng = np.random.default_rng(0)
    for side in (32, 48, 96):  # at the input size, and letterboxed larger (Lanczos down to 32, as prepare does)
        pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
        x, y = preprocess(pixels, cfg), transform(Image.fromarray(pixels, mode="L"))[None]
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(theirs(y), ours(x), rtol=0, atol=0)
    # the weights matter: timm's architecture alone, untrained, gives other features
    fresh = timm.create_model(f"local-dir:{folder}", pretrained=False).eval()
    with torch.no_grad():
        assert (fresh(x) - ours(x)).abs().max() > 1e-3


def doc_blocks(heading: str) -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "encoder.md").read_text()
    assert heading in text, f"docs/encoder.md lost its section {heading!r}"
    return re.findall(r"```python\n(.*?)```", text.split(heading, 1)[1].split("\n## ", 1)[0], flags=re.S)


def test_docs_timm_block_runs_verbatim_and_matches_cxrpipe(tmp_path, monkeypatch):
    from PIL import Image

    from cxrpipe.encoder import load_encoder, preprocess

    export_tiny_encoder(tmp_path / "data" / "models" / "multimodal")
    pixels = np.random.default_rng(2).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "chest.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(doc_blocks("## With timm alone")[0], "docs/encoder.md", "exec"), namespace)  # noqa: S102
    model, cfg = load_encoder("data/models/multimodal")
    with torch.no_grad():
        torch.testing.assert_close(namespace["pooled"], model.eval()(preprocess(pixels, cfg)), rtol=0, atol=0)
    assert tuple(namespace["tokens"].shape) == (1, 1 + 16, 32)


def test_docs_text_cache_block_runs_verbatim_from_elsewhere(tmp_path, monkeypatch):
    from cxrpipe.text.cache import Fingerprint, read_part, write_linked_text_cache, write_part

    out = tmp_path / "data" / "cache" / "text.h5"
    (tmp_path / "data" / "cache" / "text.h5.parts").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(n, 8)).astype(np.float16) for n in (3, 5)]
    files = []
    for k, e in enumerate(rows):
        files.append(out.parent / "text.h5.parts" / f"part-{k:06d}-doc.h5")
        write_part(files[-1], [k], [e], [list(range(len(e)))], 0)
    write_linked_text_cache(out, [read_part(f)[0] for f in files], np.asarray([0, 3, 8]), [11, 12], [0, 1],
                            Fingerprint("m", "", "fp32", -1, "", ("findings",), 8, "h"), 8)
    monkeypatch.chdir(tmp_path)  # the repository root, not the cache's folder
    namespace: dict = {}
    exec(compile(doc_blocks("## The text cache from your own code")[0], "docs/encoder.md", "exec"), namespace)  # noqa: S102
    np.testing.assert_array_equal(namespace["first"], rows[0])
    assert namespace["row_of"] == {11: 0, 12: 1}
