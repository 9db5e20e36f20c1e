"""Bootleg's predictor: a narrow ViT that predicts teacher hidden states at masked positions.

Input: the student's context tokens (projected to the predictor width, plus the positional
embedding of their patch) followed by one mask token per target patch (a shared learned
token plus the positional embedding of that patch). Each target block is predicted in its
own sequence (as I-JEPA): the context is repeated once per block, so a block's mask tokens
never see another block's. Positional embeddings are fixed 2-D sine-cosine (as the
predictors of I-JEPA and MAE), so the predictor has no grid-size parameter to learn.

Shapes: B images, Nc context tokens, n_t target blocks of K patches, D encoder width,
Dp predictor width, N = grid * grid patches.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from udi.models.vit import _LN_EPS, Block, init_weights


def sincos_pos_embed(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine embeddings (grid * grid, dim), row-major: the first half of the
    channels encodes the row, the second half the column (dim must be a multiple of 4)."""
    if dim % 4:
        raise ValueError(f"the predictor width must be a multiple of 4 for 2-D sine-cosine embeddings; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * omega  # (grid, dim/4)
    axis = torch.cat((pos.sin(), pos.cos()), dim=1)  # (grid, dim/2)
    rows = axis[:, None, :].expand(grid, grid, -1)
    cols = axis[None, :, :].expand(grid, grid, -1)
    return torch.cat((rows, cols), dim=-1).reshape(grid * grid, dim).float()


class Predictor(nn.Module):
    """Narrow ViT: context tokens + mask tokens -> predictions at the mask tokens.

    Args:
        embed_dim: D, the encoder width (input).
        out_dim: width of a prediction (number of target layers x D).
        grid: side of the patch grid (positions index ``grid * grid`` embeddings).
        depth: number of blocks.
        dim: Dp, the predictor width.
        num_heads: attention heads (Dp must be divisible by them).
        mlp_ratio: MLP hidden width / Dp.
    """

    def __init__(self, embed_dim: int, out_dim: int, grid: int, depth: int = 6, dim: int = 192,
                 num_heads: int = 6, mlp_ratio: float = 4.0):
        super().__init__()
        self.grid, self.dim = grid, dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.proj = nn.Linear(dim, out_dim)
        # Not persistent: a function of (grid, dim), kept out of checkpoints.
        self.register_buffer("pos_embed", sincos_pos_embed(grid, dim), persistent=False)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.apply(init_weights)

    def forward(self, context_tokens: Tensor, context: Tensor, targets: Tensor) -> Tensor:
        """Predict every target patch.

        Args:
            context_tokens: (B, Nc, D) the student's output at the context patches.
            context: (B, Nc) their patch indices.
            targets: (B, n_t, K) patch indices of the target blocks.

        Returns:
            (n_t * B, K, out_dim), block-major: row ``j * B + b`` is block j of image b.
        """
        b, n_t, k = targets.shape
        x = self.embed(context_tokens)
        x = x + self.pos_embed[context].to(x.dtype)  # (B, Nc, Dp)
        x = x.repeat(n_t, 1, 1)  # (n_t * B, Nc, Dp), block-major
        target_pos = self.pos_embed[targets.transpose(0, 1).reshape(n_t * b, k)]  # (n_t * B, K, Dp)
        x = torch.cat((x, (self.mask_token + target_pos).to(x.dtype)), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, -k:]))
