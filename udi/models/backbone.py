"""The backbone of a run config: ``model.*`` on crops of ``views.global_size``."""

from __future__ import annotations

from udi.models.vit import VisionTransformer, build_vit


def build_backbone(cfg: dict, n_cls: int) -> VisionTransformer:
    """The ViT of ``cfg['model']`` with ``n_cls`` class tokens, for crops of ``views.global_size``."""
    model = cfg["model"]
    overrides = {k: model[k] for k in ("embed_dim", "depth", "num_heads") if model[k] is not None}
    return build_vit(
        model["arch"],
        patch_size=model["patch_size"],
        img_size=cfg["views"]["global_size"],
        n_cls=n_cls,
        drop_path_rate=model["drop_path_rate"],
        stem=model["stem"],
        pos_interp=model["pos_interp"],
        **overrides,
    )
