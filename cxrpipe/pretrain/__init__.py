"""Stage two: ViT MAE pretraining with attention pooling and a contrastive loss against the text cache.

``mae`` (ViT MAE on timm parts), ``pooling`` (learned-query and text->image cross-attention pools),
``losses`` (Eq. 1 margin loss, InfoNCE, cross-process gather), ``model`` (all of it in one forward),
``data`` (image-report pairs, augmentation, deterministic batches), ``train`` (config, loop, checkpoints,
export), ``retrieval`` (the image -> report alignment check), ``heads`` (the text side and image pool
exported beside the encoder).
"""
