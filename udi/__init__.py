"""udi: self-supervised ViT pretraining for rich representations (UDI, DINO, Bootleg)."""
__version__ = "0.1.0"
