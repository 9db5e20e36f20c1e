"""udi: self-supervised ViT pretraining for rich representations (UDI, DINO, Bootleg).

Python API (imported on first use, so ``import udi`` stays cheap): ``udi.load``, ``udi.pretrain``,
``udi.evaluate``, ``udi.Backbone`` (see ``udi.api``)."""
__version__ = "0.1.0"

_API = ("load", "pretrain", "evaluate", "Backbone", "EvalTransform")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from udi import api

        return getattr(api, name)
    raise AttributeError(f"module 'udi' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
