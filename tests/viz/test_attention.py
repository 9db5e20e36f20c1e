"""Attention maps: constructed weights light up exactly the expected patch; the CLI writes the grids."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from udi.cli import main
from udi.models.pretrained import load_backbone
from udi.models.srs import SRSModule
from udi.viz.attention import (
    attention_rows, class_token_attention, figure_size_px, overlay, sample_points, srs_attention, upsample,
)
from udi.viz.images import DISPLAY_SIZE, load_views

from .conftest import GRID, pattern_backbone, spotlight_backbone


def test_class_token_attention_of_spotlight_weights_is_one_hot_on_the_target():
    target = 9
    maps = class_token_attention(spotlight_backbone(target), torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 2, 3, GRID, GRID)  # (images, class tokens, heads, h, w)
    expected = torch.zeros(GRID * GRID)
    expected[target] = 1.0
    torch.testing.assert_close(maps.flatten(-2), expected.expand_as(maps.flatten(-2)), atol=1e-4, rtol=0)


def test_exported_spotlight_lights_up_exactly_that_patch_on_a_real_image(spotlight_file, image_files):
    path, target = spotlight_file
    backbone = load_backbone(path)
    view = load_views([image_files[0]], backbone.img_size)[0]
    rows = attention_rows(backbone, None, view)
    assert [r.label for r in rows] == ["[cls]", "[cls+]"]
    row, col = divmod(target, GRID)
    block = DISPLAY_SIZE // GRID
    for r in rows:
        big = upsample(r.maps, DISPLAY_SIZE)  # (heads, P, P)
        lit = torch.zeros(DISPLAY_SIZE, DISPLAY_SIZE, dtype=torch.bool)
        lit[row * block:(row + 1) * block, col * block:(col + 1) * block] = True
        assert (big[:, lit] > 0.999).all() and (big[:, ~lit] < 1e-3).all()
        # The colour overlay shows that block bright and the rest dark.
        shown = overlay(view.display, big[0].numpy())
        brightness = shown.mean(axis=-1) - 0.4 * view.display.mean(axis=-1)  # the colour-map part
        assert brightness[lit.numpy()].min() > brightness[~lit.numpy()].max()


def test_srs_query_attends_to_its_own_patch():
    """With k = LN(x), q = 10 LN(x) and tokens of equal norm per head, each query's best key is itself."""
    backbone = pattern_backbone()
    srs = SRSModule(backbone.embed_dim, backbone.num_heads).eval()
    with torch.no_grad():
        srs.q.weight.copy_(10 * torch.eye(96))
        srs.q.bias.zero_()
        srs.kv.weight.zero_()
        srs.kv.bias.zero_()
        srs.kv.weight[:96] = torch.eye(96)
    points = torch.tensor([0, 6, 13])
    maps = srs_attention(backbone, srs, torch.randn(1, 3, 16, 16), points)
    assert maps.shape == (1, 3, 3, GRID, GRID)  # (images, points, heads, h, w)
    flat = maps[0].flatten(-2)  # (points, heads, N)
    assert (flat.argmax(-1) == points[:, None]).all()
    assert (flat.max(-1).values > 0.99).all()


def test_sample_points_are_distinct_in_range_and_seeded():
    points = sample_points((4, 5), 6, seed=3)
    assert len(set(points.tolist())) == 6 and points.min() >= 0 and points.max() < 20
    assert torch.equal(points, sample_points((4, 5), 6, seed=3))
    with pytest.raises(ValueError, match="1..20"):
        sample_points((4, 5), 21)


def _png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_cli_full_run_has_srs_rows(tiny_run, image_files, tmp_path, capsys):
    out = tmp_path / "viz"
    argv = ["viz", "attention", "--weights", str(tiny_run), "--image", str(image_files[0]),
            "--image", "astronaut", "--out", str(out), "--points", "3"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["srs"] is True
    assert [p.split("/")[-1] for p in result["images"]] == ["attention_wide.png", "attention_astronaut.png"]
    for path in result["images"]:
        assert _png_size(path) == figure_size_px(2 + 3, 3)  # [cls], [cls+], 3 SRS points; 3 heads


def test_cli_backbone_only_skips_srs_and_says_so(tiny_run, image_files, tmp_path, capsys):
    argv = ["viz", "attention", "--weights", str(tiny_run / "backbone.safetensors"),
            "--image", str(image_files[1]), "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "SRS rows skipped" in captured.err
    path = json.loads(captured.out.strip().splitlines()[-1])["images"][0]
    assert _png_size(path) == figure_size_px(2, 3)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.std() > 10  # drawn, not blank


@pytest.mark.parametrize("argv, message", [
    (["--image", "/no/such.png"], "image not found: /no/such.png"),
    (["--image", "astronaut", "--image-size", "18"], "not a multiple of the patch size 4"),
])
def test_cli_errors_are_clear(tiny_run, tmp_path, err_contains, argv, message):
    assert main(["viz", "attention", "--weights", str(tiny_run), "--out", str(tmp_path), *argv]) == 2
    assert err_contains(message)
