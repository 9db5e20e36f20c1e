"""Dense linear probe on frozen patch tokens, scored by mean IoU (docs/methods.md section 6).

A 1x1 linear classifier maps every patch token (after the final norm) to C class
logits; the logits on the g x g patch grid are upsampled bilinearly
(``align_corners=False``) to the mask resolution and trained with per-pixel
cross-entropy. Tokens are cached by the caller, so training never touches the backbone.

Optimiser: AdamW (weight decay 1e-4) with a per-step cosine decay of the learning
rate to 0. Adam needs no per-feature-scale tuning of the learning rate, which
suits features of very different backbones; the head is zero-initialised, so the
(convex) problem needs no random init and only the shuffling depends on the seed.

IoU: a confusion matrix is accumulated over the whole val split, then per class
``IoU_c = TP / (TP + FP + FN)``. A class absent from both the predictions and the
ground truth has an undefined IoU (0 / 0): it is reported as ``None`` and left out
of the mean, so a split that happens to lack a class is not penalised for it.
Target pixels outside ``[0, num_classes)`` (e.g. an ignore label 255) are not
counted and do not contribute to the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor, nn

_WEIGHT_DECAY = 1e-4
_IGNORE = -100  # cross_entropy's default ignore_index


@dataclass
class DenseConfig:
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix (C, C) int64 of integer maps of any equal shape;
    rows = target class, columns = predicted class. Targets outside [0, C) are skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    flat = target[valid] * num_classes + pred[valid]
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(conf: Tensor) -> tuple[float, list[float | None]]:
    """(mean IoU in %, per-class IoU in % or None) from a (C, C) confusion matrix
    (rows = target). Classes with TP + FP + FN = 0 get None and are excluded from
    the mean; the mean is NaN when every class is excluded."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    per_class = [100.0 * float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    present = [v for v in per_class if v is not None]
    mean = sum(present) / len(present) if present else math.nan
    return mean, per_class


def _grid_side(tokens: Tensor) -> int:
    g = math.isqrt(tokens.shape[1])
    if g * g != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid")
    return g


def _pixel_logits(head: nn.Linear, tokens: Tensor, g: int, size: tuple[int, int]) -> Tensor:
    """Tokens (B, P, D) -> per-pixel logits (B, C, H, W)."""
    logits = head(tokens.float())  # (B, P, C); float() because cached tokens may be fp16
    logits = logits.transpose(1, 2).reshape(len(tokens), -1, g, g)  # patches are row-major
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def dense_probe(
    train_tokens: Tensor,
    train_masks: Tensor,
    val_tokens: Tensor,
    val_masks: Tensor,
    num_classes: int,
    cfg: DenseConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    class_names: list[str] | None = None,
) -> dict:
    """Train the linear per-patch probe and score it on the val split.

    train_tokens (N, P, D) / val_tokens (M, P, D): frozen patch tokens after the final
    norm, P = g*g in row-major grid order, any float dtype (kept on their device and
    moved per batch). train_masks (N, H, W) / val_masks (M, H', W') int64 class maps,
    at any resolution. Returns ``{"dense_miou": %, "dense_iou_per_class": {name: % or None}}``
    with ``class_names`` (default ``"0"``, ``"1"``, ...) as keys.
    """
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if len(train_tokens) != len(train_masks) or len(val_tokens) != len(val_masks):
        raise ValueError("tokens and masks differ in number of images")
    g = _grid_side(train_tokens)
    if _grid_side(val_tokens) != g:
        raise ValueError("train and val tokens are on different patch grids")

    head = nn.Linear(train_tokens.shape[-1], num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    steps_per_epoch = math.ceil(len(train_tokens) / cfg.batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=_WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("dense probe", total=cfg.epochs)
        for _ in range(cfg.epochs):
            order = torch.randperm(len(train_tokens), generator=gen)
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                tokens = train_tokens[idx.to(train_tokens.device)].to(device)
                masks = train_masks[idx.to(train_masks.device)].to(device).long()
                masks = masks.masked_fill((masks < 0) | (masks >= num_classes), _IGNORE)
                logits = _pixel_logits(head, tokens, g, masks.shape[-2:])
                # Sum / count instead of "mean": a batch with only ignored pixels gives 0, not NaN.
                loss = F.cross_entropy(logits, masks, ignore_index=_IGNORE, reduction="sum")
                loss = loss / (masks != _IGNORE).sum().clamp(min=1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            bar.advance(task)

    conf = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, len(val_tokens), cfg.batch_size):
            tokens = val_tokens[start : start + cfg.batch_size].to(device)
            masks = val_masks[start : start + cfg.batch_size].to(device)
            pred = _pixel_logits(head, tokens, g, masks.shape[-2:]).argmax(dim=1)
            conf += confusion_matrix(pred, masks, num_classes)
    miou, per_class = iou_from_confusion(conf.cpu())
    return {"dense_miou": miou, "dense_iou_per_class": dict(zip(class_names, per_class))}
