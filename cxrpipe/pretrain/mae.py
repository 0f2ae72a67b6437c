"""Masked autoencoder (He et al., 2022) around a plain timm ``VisionTransformer``, for grayscale radiographs.

The encoder IS a ``timm.create_model(arch, in_chans=1, num_classes=0, ...)`` instance: this module drives its
parts (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``) in a masked forward, so the
exported ``encoder.safetensors`` has timm's key names and ``timm.create_model(**config)`` loads it strictly.
Position embeddings are fixed 2-D sin-cos (``requires_grad=False``), as in MAE; the encoder's unmasked
``forward_features`` therefore computes exactly what :meth:`MaskedAutoencoder.forward_encoder` computes
with ``mask_ratio=0`` and no shuffling.

Shapes: images ``[N, 1, H, W]``; ``L = (H / p) * (W / p)`` patches; ``D`` encoder width.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    """Params ``pretrain.model``. Demo: a tiny ViT at 96 px; ViT-B/16 at 224 on a GPU (see params.yaml)."""

    arch: str = "vit_tiny_patch16_224"  # timm model name written to config.json; sizes below override it
    img_size: int = 96  # input side; the image cache is resized to it when its size differs
    patch_size: int = 12
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    mlp_ratio: float = 4.0
    global_pool: Literal["avg", "token"] = "avg"  # what the exported encoder's forward() returns
    decoder_embed_dim: int = 96  # MAE decoder: light, thrown away after pretraining
    decoder_depth: int = 1
    decoder_num_heads: int = 3
    mask_ratio: float = 0.5  # fraction of patches hidden from the encoder (MAE: 0.75; FLIP: 0.5)
    norm_pix_loss: bool = True  # reconstruct per-patch normalised pixels (MAE's better setting)
    init: str = "scratch"  # scratch | timm:<model name> (hub download) | path to a local ViT/MAE checkpoint

    def timm_kwargs(self) -> dict[str, Any]:
        """kwargs of ``timm.create_model(arch, **kwargs)`` that rebuild the encoder (saved in config.json)."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": 1,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "num_classes": 0,
            "global_pool": self.global_pool,
            # fc_norm=False keeps the final LayerNorm on the tokens (key `norm.*`) for both pool types, so the
            # exported forward() is mean (or cls) of exactly the tokens the pretraining heads saw.
            "fc_norm": False,
            "class_token": True,
        }


# ----------------------------------------------------------------------------------------------- helpers


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings, MAE's layout: ``[1 + L, D]`` (row 0 zeros for the cls token).

    Half the channels encode the column index, half the row index; each half is ``[sin, cos]`` of the
    position times ``1 / 10000^(k / (D/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")  # gw[i, j] = j (column), gh[i, j] = i (row)

    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:  # pos [L] -> [L, d]
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    emb = torch.cat([one_d(embed_dim // 2, gw), one_d(embed_dim // 2, gh)], dim=1)  # [L, D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, L, p*p*C]`` (row-major patches, pixels row-major then channel)."""
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int = 1) -> torch.Tensor:
    """``[N, L, p*p*C]`` -> ``[N, C, H, W]`` (square images), the inverse of :func:`patchify`."""
    n, length, _ = x.shape
    g = int(round(length**0.5))
    if g * g != length:
        raise ValueError(f"{length} patches do not form a square grid")
    x = x.reshape(n, g, g, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, g * p, g * p)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - mask_ratio`` of the tokens of each sample (per-sample shuffle by noise argsort).

    x: ``[N, L, D]``; noise: ``[N, L]`` in [0, 1) (drawn here when None; the trainer passes noise from its
    own seeded generator so that masks do not depend on the global RNG).
    Returns (kept ``[N, K, D]``, mask ``[N, L]`` with 0 = kept and 1 = removed, ids_restore ``[N, L]``).
    """
    n, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return kept, mask, ids_restore


# ------------------------------------------------------------------------------------------------- model


@dataclasses.dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar, mean reconstruction error over masked patches
    pred: torch.Tensor  # [N, L, p*p]
    mask: torch.Tensor  # [N, L], 1 = masked
    latent: torch.Tensor  # [N, 1 + K, D], cls + visible tokens after the final norm


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        import timm
        from timm.models.vision_transformer import Block, VisionTransformer

        self.cfg = cfg
        self.encoder = timm.create_model(cfg.arch, pretrained=False, **cfg.timm_kwargs())
        if not isinstance(self.encoder, VisionTransformer):
            raise ValueError(f"pretrain.model.arch {cfg.arch!r} is not a timm VisionTransformer")
        enc = self.encoder
        if enc.cls_token is None or enc.reg_token is not None or enc.no_embed_class or enc.dynamic_img_size:
            raise ValueError(f"{cfg.arch}: the MAE needs one cls token with a position slot, no register tokens")
        self.patch_size = cfg.patch_size
        self.grid = enc.patch_embed.grid_size[0]
        num_patches = enc.patch_embed.num_patches

        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, cfg.decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.Sequential(
            *[
                Block(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True)
                for _ in range(cfg.decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size**2)  # 1 channel
        self._init_weights()
        if cfg.init != "scratch":
            load_pretrained_encoder(self.encoder, cfg.init)

    def _init_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos, xavier Linear / patch projection, normal(0.02) tokens."""
        enc = self.encoder
        enc.pos_embed.requires_grad_(False)
        enc.pos_embed.data.copy_(sincos_pos_embed_2d(enc.pos_embed.shape[-1], self.grid).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], self.grid).unsqueeze(0)
        )
        w = enc.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs ``[N, 1, H, W]`` -> (latent ``[N, 1 + K, D]``, mask ``[N, L]``, ids_restore ``[N, L]``)."""
        enc = self.encoder
        x = enc.patch_embed(imgs)  # [N, L, D]
        x = x + enc.pos_embed[:, 1:, :]
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # [N, K, D]
        else:  # every patch, in order: identical to timm's own forward_features
            n, length = x.shape[:2]
            mask = torch.zeros(n, length, device=x.device)
            ids_restore = torch.arange(length, device=x.device).expand(n, -1)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # [N, 1 + K, D]
        x = enc.norm_pre(enc.patch_drop(enc.pos_drop(x)))
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent ``[N, 1 + K, D]`` -> predicted pixels ``[N, L, p*p]``."""
        x = self.decoder_embed(latent)  # [N, 1 + K, Dd]
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], masks], dim=1)  # [N, L, Dd], shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]

    def reconstruction_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches (per-patch normalised targets when norm_pix_loss)."""
        target = patchify(imgs, self.patch_size)  # [N, L, p*p]
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [N, L]
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(self.reconstruction_loss(imgs, pred, mask), pred, mask, latent)


# ------------------------------------------------------------------------------------ pretrained weights


def load_pretrained_encoder(encoder: nn.Module, source: str) -> None:
    """Initialise ``encoder`` (1-channel timm ViT) from ``timm:<name>`` or a local ViT/MAE checkpoint.

    Accepted files: ``.safetensors`` or a torch checkpoint (a state dict, or one under ``model`` /
    ``state_dict``, as facebookresearch/mae's ``mae_pretrain_vit_base.pth``). RGB patch projections are
    summed to one channel (timm's ``adapt_input_conv``); decoder weights and heads are dropped; the position
    embedding stays the fixed sin-cos (a checkpoint's is for another grid, or learned). Loads with
    ``strict=False`` and fails unless the only missing key is ``pos_embed`` and nothing is unexpected.
    """
    from timm.models._manipulate import adapt_input_conv

    if source.startswith("timm:"):
        import timm

        name = source.split(":", 1)[1]
        log.info("initialising the encoder from timm pretrained %s (hub download)", name)
        state = timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"pretrain.model.init: checkpoint {path} not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
        log.info("initialising the encoder from %s", path)
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    drop = ("decoder", "mask_token", "head.", "fc_norm.", "pos_embed")
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.shape[1] != 1:
        state["patch_embed.proj.weight"] = adapt_input_conv(1, w)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if set(missing) != {"pos_embed"} or unexpected:
        raise ValueError(
            f"pretrain.model.init {source!r} does not fit pretrain.model: missing {sorted(set(missing) - {'pos_embed'})}, "
            f"unexpected {sorted(unexpected)}"
        )


# ------------------------------------------------------------------------- the two-step flow's hand-over

DECODER_FILE = "decoder.safetensors"


def save_decoder(mae: MaskedAutoencoder, out_dir: str | Path) -> None:
    """The MAE's decoder side (everything but the encoder: decoder blocks, mask token, ...) beside the
    exported encoder, atomically, so that a later step can continue the whole MAE (:func:`load_mae_export`)."""
    import os

    from safetensors.torch import save_file

    from cxrpipe.io import respect_umask

    state = {k: v.detach().cpu().contiguous() for k, v in mae.state_dict().items() if not k.startswith("encoder.")}
    out = Path(out_dir) / DECODER_FILE
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    respect_umask(tmp)  # safetensors writes 0600
    os.replace(tmp, out)


def load_mae_export(mae: MaskedAutoencoder, folder: Path) -> str:
    """Load an exported pretraining folder (``encoder.safetensors`` + ``decoder.safetensors``) into ``mae``,
    strictly (the model sizes must match); returns the two files' content hash (a resume key)."""
    import hashlib

    from safetensors.torch import load_file

    from cxrpipe.encoder import ENCODER_FILE

    files = [folder / ENCODER_FILE, folder / DECODER_FILE]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: the two-step flow continues an exported mae (dvc repro pretrain@mae)")
    state = {f"encoder.{k}": v for k, v in load_file(str(files[0])).items()}
    state.update(load_file(str(files[1])))
    missing, unexpected = mae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit pretrain.model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    log.info("continuing the MAE exported in %s", folder)
    return digest.hexdigest()[:16]
