"""KoLeo regulariser (Sablayrolles et al. 2019, as in DINOv2): spread features over the sphere.

For N feature vectors, L2-normalised, each one's distance to its nearest neighbour in the
batch d_i; the loss is ``-mean_i log(d_i + eps)``. Minimising it pushes apart the closest
pairs, so that features of different images do not collapse onto a few directions (what a
k-NN evaluation suffers from). No state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """features (N, D), N >= 2 -> scalar ``-mean_i log(||x_i - x_nn(i)|| + eps)`` on normalised rows."""
    if features.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 rows, got {features.shape[0]}")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    similarity = x @ x.T
    similarity.fill_diagonal_(-2.0)  # never one's own neighbour (cosine >= -1)
    nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()
