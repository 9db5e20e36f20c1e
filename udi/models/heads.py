"""DINO projection head: MLP, L2 normalisation, weight-normalised linear layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udi.models.vit import init_weights


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with ``weight = weight_g * weight_v / ||weight_v||`` per output row.

    Written by hand (not ``torch.nn.utils.weight_norm``) so the parameters are plain
    ``weight_g`` (out, 1) and ``weight_v`` (out, in), the layout of DINO checkpoints.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # nn.Linear's default init, which DINO keeps for this layer.
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight_v, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """Effective weight (out, in)."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DINOHead(nn.Module):
    """(..., in_dim) -> (..., out_dim) logits.

    ``mlp`` is Linear-GELU-(Linear-GELU)*(nlayers-2)-Linear to ``bottleneck_dim``
    (a single Linear when ``nlayers == 1``, as in DINO), followed by L2 normalisation
    and ``last_layer``. ``norm_last_layer`` freezes the row norms ``weight_g`` at 1.

    ``forward(x) == last_layer(bottleneck(x))``. The last layer is linear (no bias), so a
    weighted mean of logits equals ``last_layer`` of the same weighted mean of the normalised
    bottleneck vectors (not renormalised): callers that only need averaged logits average
    ``bottleneck(x)`` first and apply the K-wide ``last_layer`` once per average.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., bottleneck_dim): the MLP output, L2-normalised."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.bottleneck(x))
