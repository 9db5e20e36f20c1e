"""DINO loss: cross-entropy between centred/sharpened teacher [cls] outputs and
student [cls] outputs of every other view (Caron et al., 2021)."""

from __future__ import annotations

import torch
from torch import nn

from udi.losses.distill import check_centering, sinkhorn_probs, soft_cross_entropy, teacher_probs, update_center


class DINOLoss(nn.Module):
    """Multi-crop self-distillation loss with a running centre (a registered buffer).

    Args:
        out_dim: K, the head's output dimension.
        n_views: V = 2 global + L local student views.
        centering: "center" (DINO) or "sinkhorn" (the 2B teacher rows balanced over the
            prototypes by Sinkhorn-Knopp, as in DINOv2; the centre is then left untouched).
    """

    def __init__(self, out_dim: int, n_views: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "center", sinkhorn_iters: int = 3):
        super().__init__()
        self.centering = check_centering(centering)
        self.sinkhorn_iters = sinkhorn_iters
        self.n_views = n_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """student_out: (V*B, K) view-major; teacher_out: (2*B, K) for the 2 global views.

        Returns the mean over all (student view u, teacher view v != u) pairs of
        the batch-mean cross-entropy; then updates the centre (when centring).
        """
        if self.centering == "center":
            targets = teacher_probs(teacher_out, self.center, teacher_temp).chunk(2)
        else:
            targets = sinkhorn_probs(teacher_out, teacher_temp, self.sinkhorn_iters).chunk(2)
        students = student_out.chunk(self.n_views)
        total, n_pairs = 0.0, 0
        for v, target in enumerate(targets):
            for u, student in enumerate(students):
                if u == v:
                    continue  # same view for teacher and student
                total = total + soft_cross_entropy(target, student, self.student_temp).mean()
                n_pairs += 1
        if self.centering == "center":
            update_center(self.center, teacher_out, self.center_momentum)
        return total / n_pairs
