"""Primitives shared by the distillation losses (DINO, UDI): the student's cross-entropy
and the two ways of turning teacher logits into targets, centring (DINO, UDI) or
Sinkhorn-Knopp balancing (SwAV, DINOv2; an option, ``loss.centering=sinkhorn``), and the
per-group means of rows kept only at valid points (UDI's patch logits and bottleneck vectors).

Shapes: K is the head's output dimension; ``...`` any leading dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def soft_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """``H(p_t, softmax(s / tau_s))`` per row: (..., K), (..., K) -> (...)."""
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def group_means(rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Means of the valid points of each group, from their rows alone.

    rows: (P, C), the values at ``valid``'s True entries in row-major order (``x[valid]``);
    valid: (..., S) bool -> (..., C), the mean over each group's valid points (zeros where
    none is), summed in at least float32 (an index_add, which autocast leaves alone).
    """
    groups = valid.flatten(0, -2)  # (G, S)
    dtype = torch.promote_types(rows.dtype, torch.float32)
    index = groups.nonzero()[:, 0]  # the group of each row, in the order of x[valid]
    sums = torch.zeros(len(groups), rows.shape[-1], dtype=dtype, device=rows.device).index_add_(0, index, rows.to(dtype))
    counts = groups.sum(-1, keepdim=True).to(dtype).clamp(min=1.0)
    return (sums / counts).unflatten(0, valid.shape[:-1])


CENTERINGS = ("center", "sinkhorn")  # how teacher logits become targets (``loss.centering``)


def check_centering(centering: str) -> str:
    if centering not in CENTERINGS:
        raise ValueError(f"centering must be one of {', '.join(CENTERINGS)}; got {centering!r}")
    return centering


def teacher_probs(logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """Centred, sharpened teacher distribution ``softmax((t - c) / tau_t)``: (..., K) -> (..., K)."""
    return F.softmax((logits.float() - center) / teacher_temp, dim=-1)


@torch.no_grad()
def sinkhorn_probs(
    logits: torch.Tensor, teacher_temp: float, iters: int = 3, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher distribution balanced over the prototypes by Sinkhorn-Knopp (SwAV, DINOv2):
    (R, K) -> (R, K), every row a distribution, each prototype receiving about R / K of the
    total mass over the rows of all processes; the alternative to centring.

    Starts from ``exp((t - max_k t) / tau_t)``, each row shifted by its own maximum, and
    alternately normalises the prototype columns (each to 1 / K of the mass) and the rows (each
    to 1 / R), ``iters`` times, rows last. (DINOv2 starts from ``exp(t / tau_t)``: the same
    balanced result at convergence, but that overflows, or leaves rows all zero, for unbounded
    logits and a sharp teacher; after a few iterations the two starts differ slightly.) weights:
    optional (R,) 0/1 validity of the rows (patch points); rows with weight 0 take no part
    in the balance and come back as zeros.
    """
    logits = logits.float()
    if weights is None:
        weights = torch.ones(logits.shape[0], device=logits.device)
    weights = weights.float()
    distributed = dist.is_available() and dist.is_initialized()
    count = weights.sum().reshape(1)
    if distributed:
        dist.all_reduce(count)
    n_rows, n_protos = count.clamp(min=1.0), logits.shape[1]
    shifted = logits - logits.max(dim=1, keepdim=True).values  # every row keeps an entry exp(0) = 1
    q = torch.exp(shifted / teacher_temp) * weights[:, None]  # (R, K)
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iters):
        mass = q.sum(dim=0)  # (K,) each prototype's mass over all rows everywhere
        if distributed:
            dist.all_reduce(mass)
        q = q / (mass.clamp(min=tiny) * n_protos)
        q = q / (q.sum(dim=1, keepdim=True).clamp(min=tiny) * n_rows)
    return q * n_rows


@torch.no_grad()
def update_center(
    center: torch.Tensor,
    logits: torch.Tensor | Sequence[torch.Tensor],
    momentum: float,
    weights: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> None:
    """In place: ``c <- m c + (1 - m) mean(logits)``, the mean over all rows of all processes.

    center: (1, K) buffer; logits: (R, K), or a sequence of (R_i, K) parts taken as their
    concatenation (without building it); weights: optional (R,) row weights (validity of patch
    points), or one (R_i,) per part, the mean then being ``sum w t / sum w``.
    """
    parts = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if weights is None:
        weights = [None] * len(parts)
    elif isinstance(weights, torch.Tensor):
        weights = [weights]
    if len(weights) != len(parts):
        raise ValueError(f"update_center got {len(parts)} parts of logits and {len(weights)} of weights")
    total = torch.zeros(center.shape[-1] + 1, device=center.device)
    for part, w in zip(parts, weights):
        part = part.float()
        w = torch.ones(part.shape[0], device=part.device) if w is None else w.float()
        total[:-1] += w @ part  # one pass over the rows (a matrix-vector product), no (R, K) temporary
        total[-1] += w.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    total_weight = total[-1]
    # No valid entry anywhere this step keeps the centre. Chosen on the device: an `if` on the
    # weight would make the host stop here until a GPU had computed it.
    mean = total[None, :-1] / total_weight.clamp(min=torch.finfo(total.dtype).tiny)
    updated = torch.add(center * momentum, mean, alpha=1.0 - momentum)  # as mul_ then add_ rounded it
    center.copy_(torch.where(total_weight > 0, updated, center))
