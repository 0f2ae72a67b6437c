"""Stage two's data path at real shape, on this CPU: three tables, ratios measured side by side in one run.

1. ``loader``: the pretraining DataLoader alone (cxrpipe.pretrain.data: PairDataset + EpochBatches + collate)
   at ViT-B/16 input (224 px image cache) with a LLaMA-2-7b-shaped linked text cache (4096 dims, MIMIC-like
   report lengths: lognormal, median 110 tokens, sigma 0.6, 8..512; the last max_text_tokens = 256 read).
   Per-sample cost of each part, samples/s per worker, and augmentation per sample (what the loader does)
   against batched on tensors (cxrpipe.pretrain.batch_augment, what an accelerator would do).
2. ``decode``: the image cache against decoding source files each epoch: MIMIC-size 3056x2544 JPEGs (full
   decode, and Pillow's draft mode) and 12-bit DICOMs, each decoded and letterboxed to 224 by the prepare
   stage's own functions.
3. ``lm``: steps of stage two on the demo (data/prepared, data/cache/text.h5, params.yaml's pretrain model)
   with the cached text, against running the frozen demo LM (data/models/text-model, embed.quantization)
   inside the loop on the same batches. Needs `dvc repro embed` first.

    python benchmarks/data_path.py [--workdir /tmp/cxrpipe-bench] [--text-gib 2] [--only loader,decode,lm]

The synthetic files live in --workdir and are made once. The text cache here is small enough to sit in the
page cache: the loader table measures CPU cost, not disk reads (see docs/scale.md for the bandwidth a real
run needs). Timings on a shared machine move +-20%; compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

IMG = 224
HIDDEN = 4096
MAX_TEXT_TOKENS = 256


def report_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(110), 0.6, n).round(), 8, 512).astype(int)


def synthetic_radiograph(rng: np.random.Generator, h: int, w: int, noise: float = 8.0) -> np.ndarray:
    """uint8 [h, w]: smooth body-like shape + noise, so JPEG sizes are realistic (not flat, not pure noise).
    At 3056x2544, noise 2 gives ~1.5 MB at quality 95: MIMIC-CXR-JPG's mean (557.6 GB / 377,110 files)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = np.exp(-(((xx - w / 2) / (0.35 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2) ** 2)
    lungs = np.exp(-(((np.abs(xx - w / 2) - 0.17 * w) / (0.1 * w)) ** 2 + ((yy - 0.45 * h) / (0.25 * h)) ** 2))
    img = 200 * body - 120 * lungs + rng.normal(0, noise, (h, w)) + 30
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ files


def make_image_cache(path: Path, n: int) -> None:
    from cxrpipe.data.image_cache import ImageCacheWriter

    if path.exists():
        return
    rng = np.random.default_rng(0)
    base = [synthetic_radiograph(rng, IMG, IMG) for _ in range(16)]
    tmp = path.with_name(path.name + ".tmp")
    with ImageCacheWriter(tmp, [f"d{i}" for i in range(n)], IMG) as w:
        for i in range(n):
            w.write(i, np.roll(base[i % 16], i % IMG, axis=1))
    tmp.rename(path)


def make_text_cache(path: Path, gib: float, store: str = "float16") -> None:
    """A linked text cache of ~``gib`` GiB of 4096-d tokens, written as the embed stage writes it."""
    from cxrpipe.text.cache import Fingerprint, read_part, write_linked_text_cache, write_part
    from cxrpipe.text.embed import part_path, parts_dir
    from cxrpipe.text.store import EXTRA_ARRAYS, bytes_per_token, encode

    if path.exists():
        return
    rng = np.random.default_rng(1)
    n_tokens = int(gib * 2**30 / bytes_per_token(store, HIDDEN))
    lengths = report_lengths(rng, int(n_tokens / 120) + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_tokens) + 1]
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    files, offsets, row = [], [0], 0
    for k, chunk in enumerate(np.array_split(lengths, max(1, len(lengths) // 250))):
        embs, ids, extra = [], [], {n: [] for n in EXTRA_ARRAYS[store]}
        for n in chunk:
            enc, _ = encode(rng.standard_normal((int(n), HIDDEN), dtype=np.float32), store)
            embs.append(enc["embeddings"])
            for name in extra:
                extra[name].append(enc[name])
            ids.append(rng.integers(3, 32000, int(n)))
            offsets.append(offsets[-1] + int(n))
        files.append(part_path(folder, k, "bench"))
        write_part(files[-1], list(range(row, row + len(chunk))), embs, ids, 0, extra)
        row += len(chunk)
    fp = Fingerprint("synthetic", "", "bf16", -1, "", ("findings",), 512, "synthetic", store_dtype=store)
    write_linked_text_cache(path, [read_part(f)[0] for f in files], np.asarray(offsets), list(range(row)),
                            list(range(row)), fp, HIDDEN)


# ------------------------------------------------------------------------------------------------ timers


def per_item(fn, items, min_s: float = 1.0) -> float:
    """Seconds per call of ``fn(item)``, cycling over ``items`` for at least ``min_s``."""
    fn(items[0])
    n, t0 = 0, time.perf_counter()
    while True:
        fn(items[n % len(items)])
        n += 1
        if time.perf_counter() - t0 >= min_s and n >= 3:
            return (time.perf_counter() - t0) / n


def loader_table(workdir: Path, n_images: int, text_gib: float, workers: list[int], batch: int) -> None:
    from torch.utils.data import DataLoader

    from cxrpipe.encoder import normalize, to_unit_float
    from cxrpipe.pretrain.batch_augment import augment_batch
    from cxrpipe.pretrain.data import AugmentConfig, EpochBatches, Pair, PairDataset, PretrainDataConfig, augment, collate
    from cxrpipe.text.cache import TextCache

    prepared = workdir / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_image_cache(prepared / "images.h5", n_images)
    make_text_cache(workdir / "text-f16" / "text.h5", text_gib, "float16")
    make_text_cache(workdir / "text-int8" / "text.h5", text_gib / 2, "int8")
    print(f"# synthetic caches ready in {time.perf_counter() - t0:.0f} s")
    cfg = PretrainDataConfig(max_text_tokens=MAX_TEXT_TOKENS)
    rng = np.random.default_rng(2)

    print(f"\n## 1. Stage-two DataLoader alone: {IMG} px images, 4096-d text (last {MAX_TEXT_TOKENS} tokens), "
          f"batch {batch}; {n_images} images")
    for store in ("f16", "int8"):
        text = TextCache(workdir / f"text-{store}" / "text.h5")
        size = sum(f.stat().st_size for f in (workdir / f"text-{store}" / "text.h5.parts").iterdir())
        print(f"# text-{store}: {text.n_texts} reports, {int(text.offsets[-1])} tokens, {size / 2**30:.2f} GiB, "
              f"mean read {np.mean(np.minimum(np.diff(text.offsets), MAX_TEXT_TOKENS)):.0f} tokens")
    text = TextCache(workdir / "text-f16" / "text.h5")
    pairs = [Pair(i, i, int(r)) for i, r in enumerate(rng.integers(0, text.n_texts, n_images))]
    ds = PairDataset(prepared, text, pairs, cfg, IMG, augment=True)
    img0 = to_unit_float(torch.from_numpy(ds.images[0])[None])[0]
    gen = torch.Generator().manual_seed(0)
    rows = list(rng.integers(0, n_images, 200))
    text_rows = [p.text_row for p in pairs[:200]]
    int8 = TextCache(workdir / "text-int8" / "text.h5")
    int8_rows = list(rng.integers(0, int8.n_texts, 200))
    parts = {
        "image cache read + to float": per_item(lambda r: to_unit_float(torch.from_numpy(ds.images[r])[None]), rows),
        "augment (per sample, as now)": per_item(lambda _: augment(img0, AugmentConfig(), gen), [0]),
        "text read float16 (8 KiB/tok)": per_item(lambda r: text.text_row(r)[-MAX_TEXT_TOKENS:], text_rows),
        "text read int8 + decode": per_item(lambda r: int8.text_row(r)[-MAX_TEXT_TOKENS:], int8_rows),
        "normalize": per_item(lambda _: normalize(img0, 0.5, 0.25), [0]),
    }
    imgs = torch.stack([img0] * batch)
    seeds = list(range(batch))
    b_aug = per_item(lambda _: augment_batch(imgs, AugmentConfig(), seeds), [0]) / batch
    parts["augment batched (per sample)"] = b_aug
    texts = [torch.from_numpy(text.text_row(r)[-MAX_TEXT_TOKENS:]) for r in text_rows[:batch]]
    parts["collate (pad text; per sample)"] = per_item(
        lambda _: collate([(img0, t, 0) for t in texts]), [0]) / batch
    print(f"{'part':<34}{'ms/sample':>10}{'samples/s':>11}")
    for k, v in parts.items():
        print(f"{k:<34}{1e3 * v:>10.2f}{1 / v:>11.0f}")

    print(f"\n{'DataLoader (full __getitem__ + collate)':<44}{'workers':>8}{'samples/s':>11}{'per worker':>12}")
    for w in workers:
        for aug in (True, False):
            ds_w = PairDataset(prepared, text, pairs, cfg, IMG, augment=aug, normalize_images=aug)
            n_batches = max(4, min(n_images // batch, 40 if w else 12))
            loader = DataLoader(ds_w, batch_sampler=EpochBatches(n_images, batch, 0, 0), collate_fn=collate,
                                num_workers=w, persistent_workers=False)
            it = iter(loader)
            next(it)  # worker start-up and first batch not timed
            t0, n = time.perf_counter(), 0
            for _ in range(n_batches - 1):
                n += len(next(it)["index"])
            rate = n / (time.perf_counter() - t0)
            del it
            label = "augment_on loader" if aug else "augment_on device (loader reads only)"
            print(f"{label:<44}{w:>8}{rate:>11.0f}{rate / max(w, 1):>12.0f}")
    print("# workers 0 = the main process (one worker's throughput); this machine has 2 cores shared with others")


def decode_table(workdir: Path, n_files: int) -> None:
    from PIL import Image

    from cxrpipe.data.image_cache import ImageCache
    from cxrpipe.data.images import decode_dicom, decode_raster, letterbox
    from cxrpipe.encoder import to_unit_float

    folder = workdir / "fullsize"
    folder.mkdir(parents=True, exist_ok=True)
    (workdir / "prepared").mkdir(parents=True, exist_ok=True)
    make_image_cache(workdir / "prepared" / "images.h5", 2000)
    rng = np.random.default_rng(3)
    jpgs, dcms = [], []
    for i in range(n_files):
        jpg, dcm = folder / f"{i}.jpg", folder / f"{i}.dcm"
        if not jpg.exists() or not dcm.exists():
            img = synthetic_radiograph(rng, 3056, 2544, noise=2.0)
            Image.fromarray(img).save(jpg, quality=95)
            write_dicom12(dcm, (img.astype(np.uint16) << 4) | rng.integers(0, 16, img.shape, dtype=np.uint16))
        jpgs.append(jpg)
        dcms.append(dcm)
    cache = ImageCache(workdir / "prepared" / "images.h5")
    rows = list(range(0, min(len(cache), 400)))
    t = {
        "JPEG 3056x2544 full decode + resize": per_item(lambda p: letterbox(decode_raster(p), IMG), jpgs, 3.0),
        "JPEG 3056x2544 draft mode + resize": per_item(lambda p: letterbox(decode_raster(p, 2 * IMG), IMG), jpgs, 3.0),
        "DICOM 12-bit 3056x2544 + resize": per_item(lambda p: letterbox(decode_dicom(p), IMG), dcms, 3.0),
        "image cache (224 px uint8 row)": per_item(lambda r: to_unit_float(torch.from_numpy(cache[r])[None]), rows),
    }
    ref = t["image cache (224 px uint8 row)"]
    mb = np.mean([p.stat().st_size for p in jpgs]) / 1e6, np.mean([p.stat().st_size for p in dcms]) / 1e6
    print(f"\n## 2. Image cache vs decoding the source each epoch ({n_files} files each; JPEG q95 {mb[0]:.1f} MB, "
          f"DICOM {mb[1]:.1f} MB)")
    print(f"{'source':<38}{'ms/image':>10}{'images/s':>10}{'cache speed-up':>16}")
    for k, v in t.items():
        print(f"{k:<38}{1e3 * v:>10.2f}{1 / v:>10.1f}{v / ref:>15.0f}x")


def write_dicom12(path: Path, pixels: np.ndarray) -> None:
    """An uncompressed 12-bit MONOCHROME2 DICOM (BitsStored 12 in 16-bit words), as MIMIC-CXR's."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def lm_table(n_steps: int) -> None:
    from cxrpipe.config import load_params, section
    from cxrpipe.pretrain.data import EpochBatches, PairDataset, collate, find_pairs
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.train import PretrainConfig
    from cxrpipe.text.cache import TextCache
    from cxrpipe.text.embed import EmbedConfig, embed_batch
    from cxrpipe.text.model import bos_added, load_text_model

    raw = load_params("params.yaml")
    cfg, ecfg = section(raw, "pretrain", PretrainConfig), section(raw, "embed", EmbedConfig)
    text = TextCache("data/cache/text.h5")
    pairs = find_pairs("data/prepared", text, "train", cfg.data.views)
    ds = PairDataset("data/prepared", text, pairs, cfg.data, cfg.model.img_size, augment=True)
    torch.manual_seed(0)
    model = PretrainModel(cfg.model, cfg.pool, cfg.loss, text.hidden_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lm, tok = load_text_model(ecfg.model, ecfg.quantization, device="cpu")
    bos = bos_added(tok)
    batches = list(EpochBatches(len(ds), cfg.batch_size, cfg.seed, 0))
    per_epoch = len(batches)

    def step(batch: dict, run_lm: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        if run_lm:  # what stage two would do without the cache: the frozen LM on this batch's reports
            ids = [text.token_ids(ds.pairs[int(i)].text_row) for i in batch["index"]]
            hs = embed_batch(lm, ids, ecfg.layer, bos, tok.pad_token_id)
            batch = collate([(img, h[-cfg.data.max_text_tokens:], 0) for img, h in zip(batch["images"], hs)])
        t_text = time.perf_counter() - t0
        losses = model(batch["images"], batch["text"].float(), batch["text_mask"])
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, t_text

    rows = {}
    for run_lm in (False, True):
        times = []
        for b in batches[: n_steps + 1]:
            t0 = time.perf_counter()
            batch = collate([ds[k] for k in b])
            t_load = time.perf_counter() - t0
            t_step, t_text = step(batch, run_lm)
            times.append((t_load + t_step, t_text))
        times = np.array(times[1:])  # first step (warm-up) not counted
        rows["frozen LM in the loop" if run_lm else "cached text (text.h5)"] = times.mean(axis=0)
    print(f"\n## 3. Stage two with the cached text vs the frozen LM in the loop (demo: {ecfg.model} "
          f"{ecfg.quantization} on CPU, batch {cfg.batch_size}, {n_steps} steps each, {per_epoch} steps/epoch)")
    print(f"{'text from':<26}{'s/step':>8}{'text s/step':>13}{'epoch s':>9}{'ratio':>7}")
    base = rows["cached text (text.h5)"][0]
    for k, (s, tt) in rows.items():
        print(f"{k:<26}{s:>8.2f}{tt:>13.2f}{s * per_epoch:>9.0f}{s / base:>6.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cxrpipe-bench"))
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--text-gib", type=float, default=2.0)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-files", type=int, default=4)
    ap.add_argument("--lm-steps", type=int, default=4)
    ap.add_argument("--only", default="loader,decode,lm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = set(args.only.split(","))
    print(f"# torch {torch.__version__}, 1 thread per process")
    if "loader" in only:
        loader_table(args.workdir, args.n_images, args.text_gib, [int(w) for w in args.workers.split(",")], args.batch)
    if "decode" in only:
        decode_table(args.workdir, args.n_files)
    if "lm" in only:
        lm_table(args.lm_steps)


if __name__ == "__main__":
    main()
