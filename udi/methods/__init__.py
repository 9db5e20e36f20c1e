"""Pretraining methods behind one interface (``udi.methods.base.Method``), one file each.

``METHODS`` maps the config value ``method:`` to a constructor taking the resolved config:
``udi`` and ``dino`` (``udi.methods.udi``: DINO is UDI with [cls+] and the patch level
off), ``bootleg`` (``udi.methods.bootleg``). The training loop uses only this registry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from udi.config import ConfigError
from udi.methods.base import Method
from udi.methods.bootleg import BootlegMethod
from udi.methods.udi import UDIMethod

METHODS: dict[str, Callable[[dict], Method]] = {
    "udi": UDIMethod.udi,
    "dino": UDIMethod.dino,
    "bootleg": BootlegMethod,
}


def build_method(cfg: dict) -> Method:
    """The method named by ``cfg['method']``."""
    try:
        make = METHODS[cfg["method"]]
    except KeyError:
        raise ConfigError(f"'method' must be one of {sorted(METHODS)}; got {cfg['method']!r}") from None
    return make(cfg)


def build_network(cfg: dict) -> nn.Module:
    """The student network of ``cfg`` at its initial weights (drawn from the global RNG: seed
    it first). Its ``.backbone`` is the backbone a run of this config starts from."""
    return build_method(cfg).build_student()


__all__ = ["METHODS", "Method", "build_method", "build_network"]
