"""Principal components of patch tokens as colours (the DINO / DINOv2 picture).

One PCA is fitted jointly over the patches of all the given images, so that a colour means
the same thing in every image. As in DINOv2's demo, the first component, scaled to [0, 1],
separates foreground from background by a threshold; a second PCA on the foreground patches
gives three components shown as RGB, the background black. Which side of the first component
is the foreground is not fixed by PCA: the side the image borders score low on is called
background (objects tend to sit inside the frame).

Shapes: B images, N = h * w patches, D embed dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from torch import Tensor

from udi.models.vit import VisionTransformer
from udi.viz.attention import CELL_PX, DPI, upsample
from udi.viz.images import View

DEFAULT_THRESHOLD = 0.5


@torch.no_grad()
def patch_tokens(backbone: VisionTransformer, images: Tensor) -> Tensor:
    """Patch tokens after the final norm: images (B, 3, H, W) normalised -> (B, N, D)."""
    return backbone.forward_features(images)[:, backbone.n_cls:]


@dataclass
class PatchPCA:
    """first: (B, h, w) first component scaled to [0, 1] over all images, oriented so that the
    background (border) side is low; foreground: (B, h, w) bool; rgb: (B, h, w, 3) in [0, 1],
    the three foreground components, each scaled to [0, 1] over all images, background black."""

    first: np.ndarray
    foreground: np.ndarray
    rgb: np.ndarray


def _scale01(x: np.ndarray) -> np.ndarray:
    """Min-max scale each column of (n, k) to [0, 1]; a constant column becomes 0.5."""
    low, high = x.min(axis=0), x.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (x - low) / span, 0.5)


def _principal_components(x: np.ndarray, k: int) -> np.ndarray:
    """(n, D) -> (n, k') projections on the first k' = min(k, n, D) components (deterministic signs)."""
    k = min(k, len(x), x.shape[1])
    if len(x) < 2:
        return np.zeros((len(x), k))
    return PCA(n_components=k, svd_solver="full").fit_transform(x)


def border_mask(grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool, True on the outermost ring of patches."""
    mask = np.zeros(grid, dtype=bool)
    mask[0], mask[-1], mask[:, 0], mask[:, -1] = True, True, True, True
    return mask


def fit_patch_pca(tokens: Tensor, grid: tuple[int, int], threshold: float | None = DEFAULT_THRESHOLD) -> PatchPCA:
    """PCA colours of patch tokens (B, N, D) on an h x w grid (N = h * w).

    threshold: patches whose oriented first component exceeds it are foreground; None keeps
    every patch (three components of all patches as RGB).
    """
    B, N, D = tokens.shape
    h, w = grid
    if N != h * w:
        raise ValueError(f"{N} patch tokens do not fill a {h}x{w} grid")
    if B * N < 2:
        raise ValueError("PCA needs at least 2 patch tokens; give more or larger images")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ValueError(f"foreground threshold must lie in [0, 1), got {threshold}")
    x = tokens.reshape(B * N, D).double().cpu().numpy()
    first = _scale01(_principal_components(x, 1))[:, 0]
    on_border = np.tile(border_mask(grid).ravel(), B)
    if first[on_border].mean() > first.mean():
        first = 1.0 - first
    foreground = first > threshold if threshold is not None else np.ones(B * N, dtype=bool)
    rgb = np.zeros((B * N, 3))
    components = _scale01(_principal_components(x[foreground], 3)) if foreground.sum() >= 1 else np.zeros((0, 3))
    rgb[np.flatnonzero(foreground)[:, None], np.arange(components.shape[1])] = components
    return PatchPCA(first.reshape(B, h, w), foreground.reshape(B, h, w), rgb.reshape(B, h, w, 3))


def figure_size_px(num_images: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of ``plot_patch_pca``."""
    return 3 * CELL_PX, num_images * CELL_PX + CELL_PX // 2


def plot_patch_pca(views: list[View], result: PatchPCA, title: str, threshold: float | None) -> Figure:
    """One row per image: the image, the first component, the RGB of three components."""
    width, height = figure_size_px(len(views))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=9)
    axes = fig.subplots(len(views), 3, squeeze=False)
    first_title = "1st component" + (f" (fg > {threshold:g})" if threshold is not None else "")
    for r, view in enumerate(views):
        size = view.display.shape[0]
        first = upsample(torch.from_numpy(result.first[r]), size).numpy()
        rgb = upsample(torch.from_numpy(result.rgb[r]).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
        for ax, picture, name in zip(axes[r], (view.display, first, rgb), ("image", first_title, "PCA as RGB")):
            ax.imshow(picture, cmap="viridis" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r][0].set_ylabel(view.name, fontsize=7)
    return fig


def patch_pca_figure(backbone: VisionTransformer, views: list[View],
                     threshold: float | None = DEFAULT_THRESHOLD) -> Figure:
    """Fit the PCA over the patches of all ``views`` (same input size) and plot it."""
    sizes = {tuple(v.model_input.shape) for v in views}
    if len(sizes) != 1:
        raise ValueError(f"all images must have the same input size for a joint PCA, got {sorted(sizes)}")
    device = next(backbone.parameters()).device
    images = torch.stack([v.model_input for v in views]).to(device)
    grid = (images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size)
    result = fit_patch_pca(patch_tokens(backbone, images), grid, threshold)
    kept = f"foreground: {result.foreground.mean():.0%} of patches" if threshold is not None else "all patches"
    title = f"PCA of last-block patch tokens over {len(views)} image(s)\n{grid[0]}x{grid[1]} patches; {kept}"
    return plot_patch_pca(views, result, title, threshold)
