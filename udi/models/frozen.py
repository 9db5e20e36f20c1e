"""The starting point of an EMA teacher: a frozen copy of (part of) the student."""

from __future__ import annotations

import copy

from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode whose parameters require no gradient."""
    teacher = copy.deepcopy(module).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
