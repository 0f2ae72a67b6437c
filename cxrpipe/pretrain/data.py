"""Image-report pairs for pretraining: the image cache (``images.h5``) joined to the text cache (``text.h5``).

One item per image of the chosen split and views whose study has a report in the text cache. Both caches
open their HDF5 files lazily in the process that reads, so DataLoader workers each get their own handle.

Randomness is a pure function of ``(seed, epoch, index)``: :class:`EpochBatches` hands every sample its own
augmentation seed and the epoch's order comes from ``(seed, epoch)``, so a run resumed at any step sees the
very batches and augmentations an uninterrupted run sees, whatever the number of workers or processes.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cxrpipe.data.image_cache import ImageCache
from cxrpipe.data.manifest import read_images
from cxrpipe.encoder import normalize, to_unit_float
from cxrpipe.text.cache import TextCache

log = logging.getLogger(__name__)

IMAGES_H5 = "images.h5"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Params ``pretrain.data.augment``: light, radiograph-safe augmentation (train split only)."""

    rotate: float = 5.0  # max rotation, degrees
    translate: float = 0.04  # max shift, fraction of the side
    scale: tuple[float, float] = (0.95, 1.05)  # zoom range
    brightness: float = 0.1  # max additive shift of [0, 1] intensities
    contrast: float = 0.1  # max relative change of contrast around the image mean
    hflip: bool = False  # off: laterality ("left effusion") is in the reports, a flip would contradict them


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    """Params ``pretrain.data``."""

    views: tuple[str, ...] = ("PA", "AP")  # images.csv `view` values used; frontal, as the fine-tuning
    max_text_tokens: int = 256  # report tokens kept: the LAST ones (a causal LM's later tokens have read the
    # whole report, and the impression and the prompt come last); bounds the pooling cost
    pixel_mean: float = 0.5  # uint8 / 255 -> (x - mean) / std; written to config.json for fine-tuning
    pixel_std: float = 0.25
    num_workers: int = 0  # DataLoader workers (0 = in the main process: fastest for the 96 px demo)
    augment: AugmentConfig = AugmentConfig()
    # where the train images are augmented: `loader` (per sample in the DataLoader workers, torchvision) or
    # `device` (per batch after it reaches the accelerator: cxrpipe.pretrain.batch_augment, same draws)
    augment_on: Literal["loader", "device"] = "loader"


@dataclasses.dataclass(frozen=True)
class Pair:
    row: int  # images.h5 row
    study_id: int
    text_row: int  # text.h5 text row (identical reports share one)


def find_pairs(prepared: str | Path, text_cache: TextCache, split: str, views: Sequence[str]) -> list[Pair]:
    """The images of ``split`` and ``views`` whose study has a report in the text cache (others counted)."""
    images = [r for r in read_images(prepared) if r.split == split and r.view in set(views)]
    pairs = [Pair(r.row, r.study_id, text_cache.row_of(r.study_id)) for r in images if r.study_id in text_cache]
    if len(pairs) < len(images):
        log.warning("%s: %d of %d images have no report in the text cache; left out", split, len(images) - len(pairs), len(images))
    return pairs


def derange_texts(pairs: Sequence[Pair], seed: int) -> tuple[list[Pair], dict[str, Any]]:
    """The ``shuffled`` control's pairs: every study's images get the report of ANOTHER study, a fixed
    derangement seeded by ``seed`` that respects duplicates (no study gets its own text row back, nor a
    study whose report is the identical text).

    Studies are put in a seeded random order grouped by their text row (largest group first), and study
    k takes the text of study ``(k + m) mod n``, with ``m`` the largest group's size: a shift by at least a
    whole group never lands inside the same group, as long as no one text holds more than half the
    studies. Otherwise the remaining fixed points are counted (``own_text``) and logged. The images of one
    study keep sharing one (borrowed) report, and the text-row multiset is unchanged.
    """
    text_of = {p.study_id: p.text_row for p in pairs}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for sid in rng.permutation(sorted(text_of)).tolist():
        groups[text_of[sid]].append(sid)
    ordered = sorted(groups.values(), key=len, reverse=True)  # stable: ties keep the seeded order
    order = [sid for g in ordered for sid in g]
    n, shift = len(order), len(ordered[0]) if ordered else 0
    borrowed = {order[k]: text_of[order[(k + shift) % n]] for k in range(n)}
    own = sum(borrowed[sid] == text_of[sid] for sid in order)
    if own:
        log.warning("shuffled: %d of %d studies keep an identical report (one text holds over half the studies)", own, n)
    out = [dataclasses.replace(p, text_row=borrowed[p.study_id]) for p in pairs]
    return out, {"studies": n, "own_text": own, "seed": seed}


def sample_seed(*key: int) -> int:
    """A 62-bit seed from non-negative ints. Streams used: (seed, 0, epoch) the epoch's order; (seed, 1, step)
    the step's masks; (seed, 2, epoch, index) one sample's augmentation."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(2))


class PairDataset(Dataset):
    """``ds[(index, seed)]`` -> (image float ``[1, S, S]`` normalised, text float16 ``[L, hidden]``, index).

    ``seed`` None = no augmentation (evaluation). ``img_size`` differing from the cache's size resizes.
    ``normalize_images`` False: images stay in [0, 1] (the training loop augments and normalises the batch
    on the device: ``pretrain.data.augment_on: device``). ``sentences`` (a
    :class:`~cxrpipe.text.sentences.SentenceSampler`): a seeded item also carries one sentence of its report,
    ``(..., index, sentence states [L', hidden], sentence index)``.
    """

    def __init__(
        self,
        prepared: str | Path,
        text_cache: TextCache,
        pairs: Sequence[Pair],
        cfg: PretrainDataConfig,
        img_size: int,
        augment: bool,
        normalize_images: bool = True,
        sentences: Any = None,
    ):
        self.images = ImageCache(Path(prepared) / IMAGES_H5)
        self.sentences = sentences
        self.normalize_images = normalize_images
        self.text = text_cache
        self.pairs = list(pairs)
        self.cfg = cfg
        self.img_size = img_size
        self.augment = augment
        # [n, 2] int64 (text row, study id) of every pair: what the contrastive loss compares for duplicates
        self.ids = torch.tensor([[p.text_row, p.study_id] for p in self.pairs], dtype=torch.int64).reshape(-1, 2)

    def pair_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Dataset indices ``[n]`` -> ``[n, 2]`` int64 (text row, study id): pairs sharing either are positives."""
        return self.ids[index]

    def sentence_ids(self, index: torch.Tensor, sentence_row: torch.Tensor) -> torch.Tensor:
        """``[n, 2]`` int64 (drawn sentence, study id): samples sharing either are positives of the sentence term."""
        return torch.stack([sentence_row, self.ids[index, 1]], dim=1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple:
        index, seed = key
        p = self.pairs[index]
        size = (self.img_size, self.img_size)
        img = to_unit_float(torch.from_numpy(self.images[p.row])[None], size)[0]  # [1, S, S] in [0, 1]
        if self.augment and seed is not None:
            img = augment(img, self.cfg.augment, torch.Generator().manual_seed(seed))
        if self.normalize_images:
            img = normalize(img, self.cfg.pixel_mean, self.cfg.pixel_std)
        text = torch.from_numpy(self.text.text_row(p.text_row)[-self.cfg.max_text_tokens :])  # [L, hidden]
        if self.sentences is None or seed is None:
            return img, text, index
        sentence = self.sentences.draw(p.text_row, seed)
        return img, text, index, torch.from_numpy(self.sentences.states(sentence)[-self.cfg.max_text_tokens :]), sentence


def augment(img: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random small affine + brightness/contrast (+ flip if asked) of ``[1, S, S]`` in [0, 1]."""
    import torchvision.transforms.v2.functional as TF

    u = torch.rand(7, generator=gen).tolist()  # always 7 draws: the stream does not depend on the settings
    side = img.shape[-1]
    angle = (2 * u[0] - 1) * cfg.rotate
    shift = [round((2 * u[1] - 1) * cfg.translate * side), round((2 * u[2] - 1) * cfg.translate * side)]
    scale = cfg.scale[0] + u[3] * (cfg.scale[1] - cfg.scale[0])
    img = TF.affine(img, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0],
                    interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    mean = img.mean()
    img = (img - mean) * (1 + (2 * u[4] - 1) * cfg.contrast) + mean + (2 * u[5] - 1) * cfg.brightness
    if cfg.hflip and u[6] < 0.5:
        img = img.flip(-1)
    return img.clamp_(0.0, 1.0)


def pad_texts(texts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[L_i, hidden]`` each -> (``[n, max L, hidden]`` zero-padded, mask ``[n, max L]``, True = real token)."""
    length = max(t.shape[0] for t in texts)
    text = torch.zeros(len(texts), length, texts[0].shape[1], dtype=texts[0].dtype)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, t in enumerate(texts):
        text[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return text, mask


def collate(batch: list[tuple]) -> dict[str, torch.Tensor]:
    """Stack images; pad reports (and drawn sentences, when the items carry them) to the longest in the batch
    with a mask (True = real token)."""
    imgs, texts, idx = list(zip(*batch))[:3]
    text, mask = pad_texts(texts)
    out = {"images": torch.stack(imgs), "text": text, "text_mask": mask, "index": torch.tensor(idx)}
    if len(batch[0]) == 5:
        out["sentence"], out["sentence_mask"] = pad_texts([b[3] for b in batch])
        out["sentence_row"] = torch.tensor([b[4] for b in batch], dtype=torch.int64)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's permutation of ``n`` items ``[n]``, from ``(seed, epoch)``."""
    g = torch.Generator().manual_seed(sample_seed(seed, 0, epoch))
    return torch.randperm(n, generator=g).numpy()


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """This process's share of each global batch of an epoch: lists of ``(index, augmentation seed)``.

    The epoch's permutation comes from ``(seed, epoch)``; the last incomplete global batch is dropped (the
    contrastive loss wants equal batches); process ``rank`` of ``world`` takes slice ``rank`` of every global
    batch, so W processes together see exactly the batches one process sees. ``start`` skips the first
    batches (resume inside an epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        if batch_size % world:
            raise ValueError(f"pretrain.batch_size {batch_size} is not divisible by {world} processes")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world, self.start = rank, world, start

    def __len__(self) -> int:
        return max(0, self.n // self.batch_size - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = epoch_order(self.n, self.seed, self.epoch).tolist()
        local = self.batch_size // self.world
        for b in range(self.start, self.n // self.batch_size):
            glob = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, 2, self.epoch, i)) for i in glob[self.rank * local : (self.rank + 1) * local]]


# ------------------------------------------------------------------------------- duplicate pairs per batch


def group_sizes(pairs: Sequence[Pair]) -> dict[str, list[int]]:
    """Sizes of the groups of items that are positives of each other: ``same_text`` (one text row; includes
    the images of one study, whose report is one row) and ``same_study``."""
    text = collections.Counter(p.text_row for p in pairs)
    study = collections.Counter(p.study_id for p in pairs)
    return {"same_text": sorted(text.values(), reverse=True), "same_study": sorted(study.values(), reverse=True)}


def expected_pairs(sizes: Iterable[int], n: int, batch_size: int) -> float:
    """Expected unordered pairs of one group inside a uniformly drawn batch of ``batch_size`` out of ``n``
    items, summed over groups of ``sizes``: sum_g C(k_g, 2) x B (B - 1) / (N (N - 1))."""
    if n < 2:
        return 0.0
    return sum(k * (k - 1) / 2 for k in sizes) * batch_size * (batch_size - 1) / (n * (n - 1))


def expected_duplicate_pairs(pairs: Sequence[Pair], batch_size: int) -> dict[str, float]:
    """Closed-form off-diagonal positive pairs per batch: ``same_study`` and ``same_text`` (other studies)."""
    g, n = group_sizes(pairs), len(pairs)
    study = expected_pairs(g["same_study"], n, batch_size)
    return {"same_study": study, "same_text": expected_pairs(g["same_text"], n, batch_size) - study}


def _pairs_per_batch(batches: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """batches ``[nb, B]`` item indices, ids ``[n]`` -> ``[nb]`` unordered pairs sharing an id in each batch."""
    dense = np.unique(ids, return_inverse=True)[1].reshape(-1)  # ids -> 0..G-1
    nb, width = batches.shape
    key = np.repeat(np.arange(nb), width) * (dense.max() + 1) + dense[batches.reshape(-1)]
    keys, counts = np.unique(key, return_counts=True)
    return np.bincount(keys // (dense.max() + 1), weights=counts * (counts - 1) / 2, minlength=nb)


def batch_duplicate_pairs(pairs: Sequence[Pair], batch_size: int, seed: int, epochs: int) -> dict[str, Any]:
    """The off-diagonal positive pairs the training batches really hold (what the loss logs as
    ``pairs_same_*``), from the epochs' orders alone (a pure function of the seed: exact under resume):
    per-epoch means per batch and the mean over the run, split into ``same_study`` and ``same_text``
    (identical text, other studies), beside the closed-form expectation."""
    text = np.array([p.text_row for p in pairs], dtype=np.int64)
    study = np.array([p.study_id for p in pairs], dtype=np.int64)
    per_epoch: dict[str, list[float]] = {"same_study": [], "same_text": []}
    nb = len(pairs) // batch_size
    for epoch in range(epochs if nb else 0):
        batches = epoch_order(len(pairs), seed, epoch)[: nb * batch_size].reshape(nb, batch_size)
        s, t = _pairs_per_batch(batches, study), _pairs_per_batch(batches, text)
        per_epoch["same_study"].append(float(s.mean()))
        per_epoch["same_text"].append(float((t - s).mean()))
    return {
        "mean_per_batch": {k: sum(v) / max(1, len(v)) for k, v in per_epoch.items()},
        "per_epoch": per_epoch,
        "expected_per_batch": expected_duplicate_pairs(pairs, batch_size),
        "batch_size": batch_size,
    }


def eval_batches(n: int, batch_size: int) -> list[list[tuple[int, None]]]:
    """Every index once, in order, without augmentation."""
    return [[(i, None) for i in range(a, min(a + batch_size, n))] for a in range(0, n, batch_size)]
