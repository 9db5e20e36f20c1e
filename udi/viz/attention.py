"""Attention maps of the last block: each class token over the patches, per head, and the
attention of the SRS module's queries at a few patch positions (UDI runs only).

Shapes: B images, H heads, n_cls class tokens, N = h * w patches on an h x w grid,
S query points, P display size in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from udi.models.srs import SRSModule
from udi.models.vit import VisionTransformer
from udi.viz.images import View

CELL_PX = 160  # side of one grid cell in the PNG (pixels)
DPI = 100
OVERLAY_ALPHA = 0.6


def token_names(n_cls: int) -> list[str]:
    """Display names of the class tokens: [cls], then [cls+] for UDI's second token."""
    if n_cls == 2:
        return ["[cls]", "[cls+]"]
    return ["[cls]"] + [f"[cls{i}]" for i in range(1, n_cls)]


def patch_grid(backbone: VisionTransformer, images: Tensor) -> tuple[int, int]:
    """(h, w) patch grid of images (B, 3, H, W)."""
    return images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size


@torch.no_grad()
def class_token_attention(backbone: VisionTransformer, images: Tensor) -> Tensor:
    """Last-block attention of every class token over the patches.

    images: (B, 3, H, W) normalised. Returns (B, n_cls, H_heads, h, w): the softmax weights on
    the patch tokens only (the mass on class tokens is left out, so a map sums to at most 1).
    """
    n_cls = backbone.n_cls
    attn = backbone.get_attention(images)[0]  # (B, H, T, T), rows = queries
    h, w = patch_grid(backbone, images)
    return attn[:, :, :n_cls, n_cls:].transpose(1, 2).reshape(len(images), n_cls, -1, h, w)


def sample_points(grid: tuple[int, int], count: int, seed: int = 0) -> Tensor:
    """``count`` distinct patch indices (row-major on the h x w grid), drawn with ``seed``: (S,) long."""
    n = grid[0] * grid[1]
    if not 1 <= count <= n:
        raise ValueError(f"number of SRS points must lie in 1..{n} (the patches of a {grid[0]}x{grid[1]} grid), got {count}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:count].sort().values


@torch.no_grad()
def srs_attention(backbone: VisionTransformer, srs: SRSModule, images: Tensor, points: Tensor) -> Tensor:
    """Attention of the SRS module's queries at patch positions ``points`` (S,) over the patches.

    The queries are one-hot rows, as the student's SRS selection; the module reads the last
    block's patch tokens before the final norm, as in training.
    images: (B, 3, H, W) normalised. Returns (B, S, H_srs, h, w).
    """
    tokens = backbone.forward_blocks(images)[:, backbone.n_cls:]  # (B, N, D)
    B, N, _ = tokens.shape
    weights = F.one_hot(points.to(tokens.device), N).to(tokens.dtype).expand(B, -1, -1)  # (B, S, N)
    _, attn = srs(tokens, weights, return_attention=True)  # (B, H_srs, S, N)
    h, w = patch_grid(backbone, images)
    return attn.transpose(1, 2).reshape(B, len(points), -1, h, w)


def upsample(maps: Tensor, size: int) -> Tensor:
    """Nearest-neighbour upsampling (..., h, w) -> (..., size, size): each patch stays a solid block."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    return F.interpolate(flat, size=(size, size), mode="nearest").reshape(*maps.shape[:-2], size, size)


def overlay(image: np.ndarray, attention: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a colour-mapped attention map onto an image.

    image: (P, P, 3) in [0, 1]; attention: (P, P) >= 0, scaled by its own maximum (each map is
    shown on its own scale). Returns (P, P, 3) in [0, 1].
    """
    peak = float(attention.max())
    scaled = attention / peak if peak > 0 else attention
    colours = colormaps["inferno"](scaled)[..., :3]
    return (1 - alpha) * image + alpha * colours


@dataclass
class AttentionRow:
    """One row of the grid: a token's (or an SRS query's) attention, one (h, w) map per head.

    maps: (H, h, w); point: (row, col) of the query patch for SRS rows, else None.
    """

    label: str
    maps: Tensor
    point: tuple[int, int] | None = None


def attention_rows(backbone: VisionTransformer, srs: SRSModule | None, view: View,
                   points: Tensor | None = None) -> list[AttentionRow]:
    """The rows of one image's grid: every class token, then every SRS query point (if ``srs``)."""
    device = next(backbone.parameters()).device
    images = view.model_input[None].to(device)
    rows = [AttentionRow(name, maps.cpu())
            for name, maps in zip(token_names(backbone.n_cls), class_token_attention(backbone, images)[0])]
    if srs is not None and points is not None:
        _, w = patch_grid(backbone, images)
        for index, maps in zip(points.tolist(), srs_attention(backbone, srs, images, points)[0]):
            row, col = divmod(index, w)
            rows.append(AttentionRow(f"SRS query at patch ({row}, {col})", maps.cpu(), (row, col)))
    return rows


def figure_size_px(num_rows: int, num_heads: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of ``plot_attention_grid``: image column + one per head."""
    return (num_heads + 1) * CELL_PX, num_rows * CELL_PX + CELL_PX // 2


def plot_attention_grid(view: View, rows: list[AttentionRow], title: str) -> Figure:
    """Grid of overlays: tokens as rows, the image then one column per head. SRS query
    points are marked with a cross (in the image column and on each head)."""
    num_heads = max(r.maps.shape[0] for r in rows)
    width, height = figure_size_px(len(rows), num_heads)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(len(rows), num_heads + 1, squeeze=False)
    size = view.display.shape[0]
    for r, row in enumerate(rows):
        maps = upsample(row.maps, size).numpy()  # (H, P, P)
        cells = [view.display] + [overlay(view.display, m) for m in maps]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.set_axis_off()  # an SRS module with fewer heads than the backbone
                continue
            ax.imshow(cells[c], interpolation="nearest")
            if row.point is not None:
                grid_h, grid_w = row.maps.shape[-2:]
                y, x = (row.point[0] + 0.5) * size / grid_h, (row.point[1] + 0.5) * size / grid_w
                ax.plot([x], [y], marker="x", color="cyan", markersize=7, markeredgewidth=2)
            if r == 0 and c > 0:
                ax.set_title(f"head {c - 1}", fontsize=8)
        axes[r][0].set_ylabel(row.label, fontsize=7)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def attention_figure(backbone: VisionTransformer, srs: SRSModule | None, view: View,
                     num_points: int = 4, seed: int = 0) -> Figure:
    """The grid of one image: class tokens, then ``num_points`` SRS queries (patches drawn with
    ``seed``, the same for every image of that size) when ``srs`` is given."""
    grid = (view.model_input.shape[-2] // backbone.patch_size, view.model_input.shape[-1] // backbone.patch_size)
    points = sample_points(grid, min(num_points, grid[0] * grid[1]), seed) if srs is not None else None
    rows = attention_rows(backbone, srs, view, points)
    note = "" if srs is not None else "; no SRS module in these weights"
    title = (f"{view.name}: attention of the last block (block {backbone.depth}), {grid[0]}x{grid[1]} patches\n"
             f"each map on its own scale{note}")
    return plot_attention_grid(view, rows, title)


def write_attention_grids(backbone: VisionTransformer, srs: SRSModule | None, views: list[View],
                          out_dir: str | Path, num_points: int = 4, seed: int = 0) -> list[Path]:
    """One PNG per view (``attention_figure``), ``out_dir/attention_<name>.png``; returns their paths."""
    paths: list[Path] = []
    for view in views:
        fig = attention_figure(backbone, srs, view, num_points, seed)
        paths.append(save_figure(fig, Path(out_dir) / unique_png_name("attention", view.name, paths)))
    return paths


def unique_png_name(prefix: str, name: str, taken: list[Path]) -> str:
    """``prefix_<name>.png`` with unsafe characters replaced, numbered if already in ``taken``."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    candidate, n = f"{prefix}_{slug}.png", 1
    while candidate in {p.name for p in taken}:
        n += 1
        candidate = f"{prefix}_{slug}_{n}.png"
    return candidate
