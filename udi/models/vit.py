"""Pre-norm Vision Transformer with several class tokens.

Parameter names follow the DINO / timm layout (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``) so that published DINO/timm weights load after a documented conversion
(for ``n_cls=1`` the state dicts are identical).

Shapes: B batch, T = n_cls + N tokens, N patch tokens, D embed dim, H heads.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCH_PRESETS: dict[str, dict] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    # Small presets for CPU experiments and tests.
    "vit_nano": dict(embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0),
    "vit_micro": dict(embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0),
}

_LN_EPS = 1e-6


def init_weights(m: nn.Module) -> None:
    """DINO/timm init: trunc-normal(.02) Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample (training mode only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        # Rescale so the expected output equals the eval-mode output.
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) with a stride-``patch_size`` convolution."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


STEMS = ("patch", "conv")


class ConvStem(nn.Module):
    """(B, C, H, W) -> (B, N, D) through log2(patch_size) stride-2 3x3 convolutions, each
    followed by GroupNorm (one group: per-image statistics, no batch state) and GELU, then
    a 1x1 projection (``proj``) to D: the early convolutions of Xiao et al. (2021) in place
    of the patchify convolution. Widths double up to D: D/4, D/2, D for patch 8.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384):
        super().__init__()
        steps = patch_size.bit_length() - 1
        if patch_size < 2 or patch_size != 1 << steps:
            raise ValueError(f"a conv stem needs a patch size that is a power of 2 (>= 2), got {patch_size}")
        widths = [embed_dim >> (steps - 1 - i) for i in range(steps)]
        if embed_dim % (1 << (steps - 1)):
            raise ValueError(f"a conv stem for patch {patch_size} needs embed_dim divisible by {1 << (steps - 1)}")
        layers, prev = [], in_chans
        for width in widths:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, width), nn.GELU()]
            prev = width
        self.patch_size = patch_size
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(prev, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; fused SDPA unless the weights are requested."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, D) -> (B, T, D); with ``return_attention`` also the softmax weights (B, H, T, T)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if return_attention:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(B, T, D))
        return (out, attn) if return_attention else out


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(attn(LN(x))), then x + DropPath(mlp(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, D) -> (B, T, D); with ``return_attention`` also attention (B, H, T, T)."""
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


POS_INTERP = ("bicubic", "dino", "timm")


class VisionTransformer(nn.Module):
    """Pre-norm ViT with ``n_cls`` class tokens placed before the patch tokens.

    Any input whose height and width are multiples of ``patch_size`` is accepted:
    the patch-grid positional embeddings are resized bicubically to the crop's grid, by the
    convention ``pos_interp`` names (``POS_INTERP``; they agree at the native grid):

    - ``bicubic`` (default; what udi trains with): to the target size, no antialiasing;
    - ``dino``: DINO's (and DINOv2's ``interpolate_offset``): by the scale factor
      (grid + 0.1) / native grid, which samples at slightly different points;
    - ``timm``: timm's ``resample_abs_pos_embed``: to the target size, antialiased (torch's
      antialiased bicubic uses another kernel, so it differs at every non-native size).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, n_cls: int = 1, stem: str = "patch",
                 pos_interp: str = "bicubic"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if pos_interp not in POS_INTERP:
            raise ValueError(f"pos_interp must be one of {POS_INTERP}, got {pos_interp!r}")
        self.pos_interp = pos_interp
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if n_cls < 1:
            raise ValueError(f"n_cls must be >= 1, got {n_cls}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.mlp_ratio, self.qkv_bias = mlp_ratio, qkv_bias
        self.drop_path_rate, self.n_cls, self.stem = drop_path_rate, n_cls, stem
        self.grid_size = img_size // patch_size

        self.patch_embed = (PatchEmbed if stem == "patch" else ConvStem)(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, n_cls, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_cls + self.grid_size**2, embed_dim))
        # Stochastic depth rate grows linearly with depth (DINO).
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also under a meta device
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def arch_config(self) -> dict:
        """JSON-able constructor arguments; ``vit_from_config`` rebuilds the same architecture
        (``stem`` and ``pos_interp`` only when not the defaults, so older readers load such files)."""
        config = dict(img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
                      embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                      mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                      drop_path_rate=self.drop_path_rate, n_cls=self.n_cls)
        if self.stem != "patch":
            config["stem"] = self.stem
        if self.pos_interp != "bicubic":
            config["pos_interp"] = self.pos_interp
        return config

    def interpolate_pos_encoding(self, h: int, w: int) -> Tensor:
        """Positional embeddings (1, n_cls + h*w, D) for an h x w patch grid."""
        if h == w == self.grid_size:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, : self.n_cls], self.pos_embed[:, self.n_cls :]
        g, D = self.grid_size, self.embed_dim
        grid = patch_pos.reshape(1, g, g, D).permute(0, 3, 1, 2)
        if self.pos_interp == "dino":
            patch_pos = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic",
                                      align_corners=False)
        else:
            patch_pos = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False,
                                      antialias=self.pos_interp == "timm")
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, D)], dim=1)

    def prepare_tokens(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, n_cls + N, D) with positional embeddings.

        keep: optional LongTensor (B, K) of patch indices (row-major in the crop's grid);
        only those patch tokens (plus all class tokens) are returned, giving (B, n_cls + K, D).
        """
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of patch_size {p}")
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(x)], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(H // p, W // p)
        if keep is None:
            return tokens
        patches = tokens[:, self.n_cls :].gather(1, keep.unsqueeze(-1).expand(-1, -1, self.embed_dim))
        return torch.cat([tokens[:, : self.n_cls], patches], dim=1)

    def forward_blocks(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> output of the last block before the final norm (B, n_cls + N, D)."""
        x = self.prepare_tokens(x, keep)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_features(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> all tokens after the final norm (B, n_cls + N, D)."""
        return self.norm(self.forward_blocks(x, keep))

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> normed class tokens (B, n_cls, D)."""
        # LayerNorm is per token, so normalising only the class tokens is enough.
        return self.norm(self.forward_blocks(x)[:, : self.n_cls])

    def _block_indices(self, indices: Sequence[int]) -> list[int]:
        out = []
        for i in indices:
            if not -self.depth <= i < self.depth:
                raise IndexError(f"block index {i} out of range for depth {self.depth}")
            out.append(i % self.depth)
        return out

    def forward_intermediates(self, x: Tensor, indices: Sequence[int], norm: bool = False,
                              keep: Tensor | None = None) -> list[Tensor]:
        """Hidden states (B, n_cls + N, D) after the given blocks, in the order of ``indices``.

        indices are 0-based block numbers (negative ones count from the end);
        ``norm`` applies the final LayerNorm. Blocks after the last requested one are skipped.
        """
        idx = self._block_indices(indices)
        if not idx:
            return []
        x = self.prepare_tokens(x, keep)
        states = {}
        for i, blk in enumerate(self.blocks[: max(idx) + 1]):
            x = blk(x)
            if i in idx:
                states[i] = self.norm(x) if norm else x
        return [states[i] for i in idx]

    def get_attention(self, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
        """Softmax attention weights (B, H, T, T) of the given blocks (default: the last one),
        in the order of ``indices``. Wrap in ``torch.no_grad()`` when only visualising."""
        idx = self._block_indices([-1] if indices is None else indices)
        if not idx:
            return []
        x = self.prepare_tokens(x)
        attns = {}
        for i, blk in enumerate(self.blocks[: max(idx) + 1]):
            if i in idx:
                x, attns[i] = blk(x, return_attention=True)
            else:
                x = blk(x)
        return [attns[i] for i in idx]


def build_vit(arch: str = "vit_small", patch_size: int = 16, img_size: int = 224, n_cls: int = 1,
              drop_path_rate: float = 0.0, **overrides) -> VisionTransformer:
    """Build a ViT from a preset name; ``overrides`` may replace embed_dim, depth,
    num_heads, mlp_ratio, qkv_bias, in_chans, stem (``patch`` | ``conv``) or pos_interp."""
    if arch not in ARCH_PRESETS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCH_PRESETS)}")
    allowed = {"embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "in_chans", "stem", "pos_interp"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; allowed: {sorted(allowed)}")
    kwargs = {**ARCH_PRESETS[arch], **overrides}
    return VisionTransformer(img_size=img_size, patch_size=patch_size, n_cls=n_cls,
                             drop_path_rate=drop_path_rate, **kwargs)


def vit_from_config(cfg: dict) -> VisionTransformer:
    """Inverse of ``VisionTransformer.arch_config``; unknown keys are an error naming them."""
    known = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown architecture field(s) {sorted(unknown)} (this udi knows {sorted(known)})")
    return VisionTransformer(**cfg)
