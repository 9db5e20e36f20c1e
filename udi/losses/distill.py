"""Primitives shared by the distillation losses (DINO, UDI).

Shapes: K is the head's output dimension; ``...`` any leading dimensions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def soft_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """``H(p_t, softmax(s / tau_s))`` per row: (..., K), (..., K) -> (...)."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def teacher_probs(logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution ``softmax((t - c) / tau_t)``: (..., K) -> (..., K)."""
    return F.softmax((logits.float() - center) / teacher_temp, dim=-1)


@torch.no_grad()
def update_center(center: torch.Tensor, logits: torch.Tensor, momentum: float, weights: torch.Tensor | None = None) -> None:
    """In place: ``c <- m c + (1 - m) mean(logits)``, the mean over all rows of all processes.

    center: (1, K) buffer; logits: (R, K); weights: optional (R,) row weights
    (validity of patch points), the mean then being ``sum w t / sum w``.
    """
    logits = logits.float()
    if weights is None:
        weights = torch.ones(logits.shape[0], device=logits.device)
    weights = weights.float()
    stats = torch.cat([(weights[:, None] * logits).sum(dim=0), weights.sum().reshape(1)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    total_weight = stats[-1]
    if total_weight <= 0:
        return  # no valid entry anywhere this step: keep the centre
    center.mul_(momentum).add_(stats[None, :-1] / total_weight, alpha=1.0 - momentum)
