"""SRS module of UDI: attention pooling of a view's patches at sampled points.

Shapes: B batch, N patch tokens of the view, S sampled points, D dim, H heads.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from udi.models.vit import init_weights


class SRSModule(nn.Module):
    """One query per sampled point, read from the view's tokens through a map ``weights``.

    ``X = norm_in(x)``, ``Q = weights @ q(X)``, ``K, V = kv(X)``,
    ``Z = softmax(Q K^T / sqrt(d_head)) V`` per head, ``out = norm_out(proj(Z) + weights @ X)``.
    The student passes one-hot rows (its own selection), the teacher bilinear rows
    (the point's position on its view); both sum to 1, so ``Q = q(weights @ X)``, which is
    how it is computed (the projection on the S points instead of the N tokens). All-zero
    rows (invalid points) give finite outputs that the caller must drop.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_weights)

    def forward(self, x: Tensor, weights: Tensor,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, D) patch tokens of the last block (before the backbone's final norm),
        weights (B, S, N) -> (B, S, D); with ``return_attention`` also attention (B, H, S, N).
        """
        B, N, D = x.shape
        if weights.shape[0] != B or weights.shape[-1] != N:
            raise ValueError(f"weights {tuple(weights.shape)} do not match tokens {tuple(x.shape)}")
        S, H = weights.shape[1], self.num_heads
        X = self.norm_in(x)
        weights = weights.to(X.dtype)
        pooled = weights @ X  # (B, S, D), the points' tokens, also the skip connection
        q = self.q(pooled).reshape(B, S, H, D // H).transpose(1, 2)
        k, v = self.kv(X).reshape(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4)
        if return_attention:
            attn = ((q @ k.transpose(-2, -1)) * (D // H) ** -0.5).softmax(dim=-1)
            z = attn @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)
        out = self.norm_out(self.proj(z.transpose(1, 2).reshape(B, S, D)) + pooled)
        return (out, attn) if return_attention else out
