"""Selective Aggregation probe (Przewięźlikowski et al., "Beyond [cls]"; docs/methods.md section 6).

Attention-based multiple-instance pooling over frozen patch tokens (the last block's
output *before* the final norm): a score per token, softmax over the tokens, the
weighted sum of the tokens, ``BatchNorm1d`` without affine parameters, then a linear
classifier. Scores, BatchNorm statistics and classifier are trained jointly with
cross-entropy; the backbone is not involved (the caller extracts the tokens once).

Optimiser: SGD with momentum 0.9 and a cosine schedule, as the linear probe
(:mod:`udi.eval.linear`), so the two probes differ only in the pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor

from udi.eval.linear import cosine_sgd, epoch_batches, linear_head, num_batches, seeded, top1


class SelectiveAggregation(nn.Module):
    """Attention-MIL pooling + BatchNorm (no affine) + linear classifier.

    Scores: ``w^T z_i`` or, with ``hidden_dim``, ``w^T tanh(V z_i + b)`` (Ilse et al.'s
    attention MIL). ``w`` starts at zero, so training starts from mean pooling.
    """

    def __init__(self, dim: int, num_classes: int, hidden_dim: int | None = None):
        super().__init__()
        if hidden_dim is None:
            self.score = nn.Linear(dim, 1, bias=False)  # a bias would cancel in the softmax
            last = self.score
        else:
            last = nn.Linear(hidden_dim, 1, bias=False)
            self.score = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), last)
        nn.init.zeros_(last.weight)
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.head = linear_head(dim, num_classes)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, N, D) -> logits (B, C) and attention weights (B, N) (rows sum to 1)."""
        weights = self.score(tokens).squeeze(-1).softmax(dim=1)  # (B, N)
        pooled = torch.einsum("bn,bnd->bd", weights, tokens)
        return self.head(self.norm(pooled)), weights


@dataclass
class SelAggConfig:
    """Selective Aggregation training settings."""

    epochs: int = 50
    lr: float = 0.01  # for a batch of 256; scaled linearly with batch_size
    batch_size: int = 256
    hidden_dim: int | None = None
    seed: int = 0


def train_selective_aggregation(
    train_tokens: Tensor,
    train_y: Tensor,
    val_tokens: Tensor,
    val_y: Tensor,
    num_classes: int,
    cfg: SelAggConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    model: SelectiveAggregation | None = None,
) -> dict[str, float]:
    """Train a :class:`SelectiveAggregation` probe on frozen patch tokens.

    SGD (momentum 0.9, no weight decay) at ``cfg.lr * batch_size / 256`` with a cosine
    schedule over all steps; the validation top-1 (BatchNorm in eval mode) is measured
    after every epoch. All randomness is seeded by ``cfg.seed``.

    Args:
        train_tokens: (N, P, D) patch tokens, last block before the final norm; may be
            float16 and stay on their device (batches are moved and cast to float32).
        train_y: (N,) int64 labels in ``[0, num_classes)``.
        val_tokens: (M, P, D) validation tokens.
        val_y: (M,) int64 labels.
        num_classes: number of classes C.
        cfg: training settings.
        device: where the probe trains.
        progress: show a rich progress bar over epochs.
        model: a probe to train in place (to inspect it afterwards, e.g. its attention
            weights); None builds one from ``cfg`` (seeded).

    Returns:
        ``{"selagg_top1_best": %, "selagg_top1_final": %}``.
    """
    n, _, dim = train_tokens.shape
    if model is None:
        with seeded(cfg.seed):
            model = SelectiveAggregation(dim, num_classes, cfg.hidden_dim)
    model.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * num_batches(n, cfg.batch_size)
    opt, sched = cosine_sgd(model.parameters(), cfg.lr, cfg.batch_size, 0.0, steps)

    def classify(tokens: Tensor) -> Tensor:
        return model(tokens)[0]

    best = final = 0.0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("selective aggregation", total=cfg.epochs)
        for _ in range(cfg.epochs):
            model.train()
            for idx in epoch_batches(n, cfg.batch_size, generator):
                idx = idx.to(train_tokens.device)
                logits = classify(train_tokens[idx].to(device).float())
                loss = F.cross_entropy(logits, train_y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            final = top1(classify, val_tokens, val_y, cfg.batch_size, device)
            best = max(best, final)
            bar.update(task, advance=1, description=f"selective aggregation: val top-1 {final:.1f}% (best {best:.1f}%)")
    return {"selagg_top1_best": best, "selagg_top1_final": final}
