"""The stage-two model: MAE + text projection + attention pooling + contrastive loss, one forward.

``PretrainModel.forward`` returns the named losses of one batch: ``loss = mae_loss + weight_text *
contrastive_loss``. The contrastive term is always computed, also for the ``mae`` variant (weight 0): both
variants then build the same modules, consume the same random numbers and do the same work, so the only
difference between them is whether the text gradient reaches the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrpipe.pretrain.losses import (
    LossConfig,
    build_contrastive_loss,
    gather_ids,
    gather_padded,
    gather_with_grad,
    world_size,
)
from cxrpipe.pretrain.mae import MAEConfig, MaskedAutoencoder
from cxrpipe.pretrain.pooling import AttentionPool, CrossAttentionPool, PoolConfig, TextProjection


class PretrainModel(nn.Module):
    def __init__(self, model: MAEConfig, pool: PoolConfig, loss: LossConfig, text_hidden: int):
        super().__init__()
        self.mae = MaskedAutoencoder(model)
        self.pool_kind = pool.kind
        self.weight_text = loss.weight_text
        self.visible_tokens = loss.visible_tokens
        self.text_proj = TextProjection(text_hidden, pool.dim)
        self.text_pool = AttentionPool(pool.dim, pool.dim, pool.num_heads, pool.mlp_ratio)
        if pool.kind == "latent":
            self.image_pool = AttentionPool(model.embed_dim, pool.dim, pool.num_heads, pool.mlp_ratio)
        else:
            self.cross_pool = CrossAttentionPool(model.embed_dim, pool.dim, pool.num_heads, pool.mlp_ratio)
        self.contrastive = build_contrastive_loss(loss)

    @property
    def encoder(self) -> nn.Module:
        """The plain timm ViT that is exported."""
        return self.mae.encoder

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Every patch token of unmasked images: ``[N, 1, H, W] -> [N, L, D]`` (cls dropped)."""
        latent, _, _ = self.mae.forward_encoder(images, mask_ratio=0.0)
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
    ) -> dict[str, torch.Tensor]:
        """images ``[B, 1, H, W]``, text ``[B, L, hidden]``, mask ``[B, L]`` bool, noise ``[B, num_patches]``,
        ids ``[B, 2]`` int64 (text row, study id: pairs sharing either are positives; None = diagonal only)."""
        out = self.mae(images, noise=noise)
        if self.visible_tokens:
            patches = out.latent[:, 1:, :]  # [B, K, D], FLIP: the visible tokens of the masked image
        else:
            patches = self.patch_tokens(images)  # [B, L, D], a second, unmasked pass
        image_emb, text_emb = self.embed_pairs(patches, text, text_mask, gather=True)
        latent = self.pool_kind == "latent"
        if ids is not None and not latent and world_size() > 1:
            ids = gather_ids(ids)  # the cross pool's pair features are already global (embed_pairs)
        con = self.contrastive(image_emb, text_emb, ids=ids, gather=latent)
        losses = {"loss": out.loss + self.weight_text * con["contrastive_loss"], "mae_loss": out.loss}
        losses.update(con)
        return losses
