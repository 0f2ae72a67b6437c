"""The stage-two model: MAE + text projection + attention pooling + contrastive loss, one forward.

``PretrainModel.forward`` returns the named losses of one batch: ``loss = weight_mae * mae_loss +
weight_text * contrastive_loss``. Every variant builds the same modules from the same random numbers (the
heads too) and sees the same batches, masks and augmentations; with ``weight_text = 0`` (``mae``,
``continued``) the contrastive pass is skipped (it would only log an untrained head's loss), so the only
difference in what reaches the encoder is the text gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrpipe.pretrain.heads import add_alignment_modules
from cxrpipe.pretrain.losses import (
    LossConfig,
    gather_ids,
    gather_padded,
    gather_with_grad,
    world_size,
)
from cxrpipe.pretrain.mae import MAEConfig, MaskedAutoencoder
from cxrpipe.pretrain.pooling import PoolConfig


class PretrainModel(nn.Module):
    def __init__(self, model: MAEConfig, pool: PoolConfig, loss: LossConfig, text_hidden: int):
        super().__init__()
        self.mae = MaskedAutoencoder(model)
        self.weight_text = loss.weight_text
        self.weight_mae = loss.weight_mae
        self.visible_tokens = loss.visible_tokens
        self.contrastive_mask_ratio = loss.contrastive_mask_ratio
        self.sentence_weight = loss.sentence_weight
        add_alignment_modules(self, pool, loss, text_hidden, model.embed_dim)

    @property
    def encoder(self) -> nn.Module:
        """The plain timm ViT that is exported."""
        return self.mae.encoder

    def patch_tokens(self, images: torch.Tensor, mask_ratio: float = 0.0,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens of the images, ``[N, 1, H, W] -> [N, K, D]`` (cls dropped): every patch in order
        (``mask_ratio`` 0), else the ``1 - mask_ratio`` kept by ``noise`` ``[N, L]``."""
        latent, _, _ = self.mae.forward_encoder(images, mask_ratio=mask_ratio, noise=noise)
        return latent[:, 1:, :]

    def embed_pairs(
        self,
        patches: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        gather: bool = False,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text embeddings in the shared space.

        patches ``[N, P, D]``; text ``[M, L, hidden]`` raw hidden states, mask ``[M, L]`` ->
        (image ``[N, dim]`` for the latent pool or ``[N', M', dim]`` for the cross pool, text ``[M', dim]``).
        For the cross pool with ``gather``, the tokens of every process are gathered first (the pairs need
        them), so N', M' are global sizes; the latent pool's embeddings are gathered inside the loss.
        """
        tokens = self.text_proj(text)  # [M, L, dim]
        if self.pool_kind == "latent":
            return self.image_pool(patches), self.text_pool(tokens, text_mask)
        if gather and world_size() > 1:
            patches = gather_with_grad(patches)
            tokens = gather_padded(tokens, dim=1)
            text_mask = gather_padded(text_mask.to(torch.uint8), dim=1).bool()
        return self.cross_pool(tokens, text_mask, patches, chunk=chunk), self.text_pool(tokens, text_mask)

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        noise: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        noise2: torch.Tensor | None = None,
        sentence: torch.Tensor | None = None,
        sentence_mask: torch.Tensor | None = None,
        sentence_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """images ``[B, 1, H, W]``, text ``[B, L, hidden]``, mask ``[B, L]`` bool, noise ``[B, num_patches]``,
        ids ``[B, 2]`` int64 (text row, study id: pairs sharing either are positives; None = diagonal only),
        noise2 ``[B, num_patches]``: the contrastive pass's own mask (``visible_tokens`` false and
        ``contrastive_mask_ratio`` > 0). ``sentence`` ``[B, L', hidden]`` + mask + ``sentence_ids`` ``[B, 2]``
        (drawn sentence, study id): one sentence of each report, for the ``sentence_weight`` term (latent pool):
        ``contrastive_loss = (1 - w) report_loss + w sentence_loss`` on the same image embedding."""
        out = self.mae(images, noise=noise)
        if self.weight_text == 0:  # mae / continued: no text term, so no contrastive pass (its heads stay at init)
            zero = out.loss.new_zeros(())
            return {"loss": self.weight_mae * out.loss, "mae_loss": out.loss, "contrastive_loss": zero}
        if self.visible_tokens:
            patches = out.latent[:, 1:, :]  # [B, K, D], FLIP: the visible tokens of the masked image
        else:  # a second pass: unmasked (ratio 0) or with its own, lighter mask
            patches = self.patch_tokens(images, self.contrastive_mask_ratio, noise2)
        image_emb, text_emb = self.embed_pairs(patches, text, text_mask, gather=True)
        latent = self.pool_kind == "latent"
        if ids is not None and not latent and world_size() > 1:
            ids = gather_ids(ids)  # the cross pool's pair features are already global (embed_pairs)
        con = self.contrastive(image_emb, text_emb, ids=ids, gather=latent)
        if self.sentence_weight and sentence is not None:
            if not latent:
                raise ValueError("pretrain.loss.sentence_weight needs pool.kind latent (one image embedding)")
            sent = self.contrastive(image_emb, self.text_pool(self.text_proj(sentence), sentence_mask),
                                    ids=sentence_ids, gather=True)
            w = self.sentence_weight
            con = {**con, "report_loss": con["contrastive_loss"], "sentence_loss": sent["contrastive_loss"],
                   "contrastive_loss": (1 - w) * con["contrastive_loss"] + w * sent["contrastive_loss"]}
        total = self.weight_mae * out.loss + self.weight_text * con["contrastive_loss"]
        losses = {"loss": total, "mae_loss": out.loss}
        losses.update(con)
        return losses
