"""AdamW with weight decay only on weights of rank >= 2, and the EMA teacher update."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: ``decay`` (parameters of rank >= 2: matrices, conv kernels, class tokens and
    positional embeddings, as in DINO) and ``no_decay`` (biases and norm weights, rank 1)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model), lr=0.0, weight_decay=0.0)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["apply_wd"]:
            group["weight_decay"] = weight_decay


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` over all parameters (same order)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


def cancel_last_layer_grads(model: nn.Module) -> None:
    """Freeze the head's last layer during the first epoch(s) (DINO: stabilises the start)."""
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
