"""Patch PCA: colours separate regions of different tokens; the CLI writes one PNG."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from udi.cli import main
from udi.viz.pca import figure_size_px, fit_patch_pca

GRID = (6, 6)


def two_region_tokens(inside: torch.Tensor, outside: torch.Tensor, images: int = 2, noise: float = 0.01):
    """Tokens (images, 36, D): ``inside`` on the central 2x2 patches, ``outside`` elsewhere, plus noise."""
    centre = torch.zeros(GRID, dtype=torch.bool)
    centre[2:4, 2:4] = True
    generator = torch.Generator().manual_seed(0)
    tokens = torch.where(centre.flatten()[:, None], inside, outside).expand(images, -1, -1)
    return tokens + noise * torch.randn(tokens.shape, generator=generator), centre.numpy()


@pytest.fixture
def regions():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, generator=generator), torch.randn(16, generator=generator)


def test_without_mask_every_inside_colour_differs_from_every_outside_colour(regions):
    tokens, centre = two_region_tokens(*regions)
    result = fit_patch_pca(tokens, GRID, threshold=None)
    assert result.rgb.shape == (2, 6, 6, 3) and result.rgb.min() >= 0 and result.rgb.max() <= 1
    assert result.foreground.all()
    inside, outside = result.rgb[:, centre], result.rgb[:, ~centre]  # (2, 4, 3), (2, 32, 3)
    gaps = np.abs(inside.reshape(-1, 1, 3) - outside.reshape(1, -1, 3)).max(axis=-1)
    assert gaps.min() > 0.9  # the first component alone puts them at opposite ends


@pytest.mark.parametrize("swap", [False, True])
def test_foreground_is_the_region_away_from_the_border(regions, swap):
    inside, outside = regions[::-1] if swap else regions  # PCA's sign must not decide the foreground
    tokens, centre = two_region_tokens(inside, outside)
    result = fit_patch_pca(tokens, GRID)
    assert (result.foreground == centre).all()
    assert (result.rgb[:, ~centre] == 0).all()  # background black
    assert (result.rgb[:, centre].max(axis=-1) > 0).all()
    assert (result.first[:, centre] > 0.9).all() and (result.first[:, ~centre] < 0.1).all()


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="do not fill a 6x6 grid"):
        fit_patch_pca(torch.randn(1, 30, 8), GRID)
    with pytest.raises(ValueError, match="threshold"):
        fit_patch_pca(torch.randn(1, 36, 8), GRID, threshold=1.5)


def test_cli_writes_one_png_of_the_expected_size(tiny_run, image_files, tmp_path, capsys):
    argv = ["viz", "pca", "--weights", str(tiny_run), "--images", str(image_files[0]), str(image_files[1]),
            "chelsea", "--out", str(tmp_path / "viz")]
    assert main(argv) == 0
    path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["image"]
    with Image.open(path) as im:
        assert im.size == figure_size_px(3)
        assert np.asarray(im.convert("RGB")).std() > 10
