"""Backbone (ViT), DINO projection head and the UDI SRS module."""
from udi.models.heads import DINOHead, WeightNormLinear
from udi.models.srs import SRSModule
from udi.models.vit import ARCH_PRESETS, VisionTransformer, build_vit, vit_from_config

__all__ = [
    "ARCH_PRESETS",
    "DINOHead",
    "SRSModule",
    "VisionTransformer",
    "WeightNormLinear",
    "build_vit",
    "vit_from_config",
]
