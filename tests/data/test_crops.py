"""Tests of training crops cut from the full-resolution image (data.crops: full)."""
import numpy as np
import pytest
import torch
from PIL import Image

from udi.config import ConfigError, crop_mode, load_config
from udi.data.augment import Photometric, crop_resize, normalize
from udi.data import crops as crops_module
from udi.data.crops import FullResolutionViews, crop_image, item_seed
from udi.data.datasets import ImageFolderDataset
from udi.data.views import ViewSpec, views_from_crops

W, H = 500, 375  # an ImageNet-like photo


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """High-frequency content on every channel (stripes of a few pixels and noise)."""
    yy, xx = np.mgrid[0:H, 0:W]
    noise = np.random.default_rng(0).uniform(0, 255, (H, W))
    channels = [127.5 + 127.5 * np.sin(xx * 0.9 + yy * 0.3), 127.5 + 127.5 * np.sin(xx * 0.2 - yy * 1.1), noise]
    return Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def box_of_pixels(left: int, top: int, right: int, bottom: int, size: int) -> tuple[float, ...]:
    """The normalised box (crop_resize's corner-aligned convention) that samples the same points as
    PIL's crop (left, top, right, bottom) resized to ``size``."""
    sx, sy = (right - left) / size, (bottom - top) / size
    return ((left + sx / 2 - 0.5) / (W - 1), (top + sy / 2 - 0.5) / (H - 1),
            (right - sx / 2 - 0.5) / (W - 1), (bottom - sy / 2 - 0.5) / (H - 1))


@pytest.mark.parametrize("pixels, size", [
    ((100, 50, 350, 300), 224),  # a global crop of area 0.33, downsampled
    ((0, 0, 375, 375), 224),  # the largest square, at the border
    ((20, 30, 120, 130), 96),  # a local crop, downsampled
])
def test_crops_agree_with_a_direct_pil_crop_and_resize(photo, pixels, size):
    # Reached: 58-64 dB (the border pixels differ: PIL's crop clamps its filter at the crop's edge).
    # The canvas path on the same box stays near 20 dB: a 256 px canvas has lost the stripes.
    reference = np.asarray(photo.crop(pixels).resize((size, size), Image.Resampling.BICUBIC))
    box = box_of_pixels(*pixels, size)
    ours, used = crop_image(photo, box, size)
    assert psnr(ours.permute(1, 2, 0).numpy(), reference) >= 50
    assert torch.allclose(used, torch.tensor(box), atol=1e-6)
    canvas = torch.from_numpy(np.asarray(photo.resize((256, 256), Image.Resampling.BICUBIC)).copy()).permute(2, 0, 1)
    from_canvas = crop_resize(canvas[None], torch.tensor([box]), size)[0].mul(255).round().byte()
    assert psnr(from_canvas.permute(1, 2, 0).numpy(), reference) < 30


def test_flipped_box_mirrors_the_crop(photo):
    box = box_of_pixels(40, 60, 240, 260, 96)
    plain, used = crop_image(photo, box, 96)
    flipped, used_flipped = crop_image(photo, (box[2], box[1], box[0], box[3]), 96)
    assert torch.equal(flipped, plain.flip(-1))
    assert torch.allclose(used_flipped, used[[2, 1, 0, 3]])


def test_samples_sit_where_the_returned_box_says_even_at_the_border():
    # A linear ramp is reproduced exactly by bicubic interpolation (upsampling: no antialiasing), so
    # each output pixel shows the position it samples: the maps' convention, for the box actually used.
    w, h = 40, 30
    ramp = np.tile(np.linspace(0, 255, w), (h, 1))
    image = Image.fromarray(np.stack([ramp, ramp, ramp], -1).round().astype(np.uint8))
    values = np.asarray(image)[0, :, 0].astype(np.float64)
    for box in [(0.2, 0.1, 0.7, 0.9), (0.0, 0.0, 1.0, 1.0), (0.9, 0.2, 0.3, 0.8)]:
        crop, used = crop_image(image, box, 64)
        x = torch.lerp(used[0], used[2], torch.linspace(0, 1, 64)).double().numpy() * (w - 1)
        expected = np.interp(x, np.arange(w), values)
        assert np.abs(crop[0, 32].double().numpy() - expected)[2:-2].max() <= 1.0


def test_a_box_reaching_past_the_border_is_cut_there(photo):
    # Downsampling the whole width: the first and last samples would need filter taps outside.
    crop, used = crop_image(photo, (0.0, 0.0, 1.0, 1.0), 50)
    assert crop.shape == (3, 50, 50)
    assert 0 <= used[0] < 0.02 and 0.98 < used[2] <= 1
    assert used[0] > 0  # the first sample moved inside: the border is its pixel's left edge


def _folder(tmp_path, n=6):
    folder = tmp_path / "photos" / "cls"
    folder.mkdir(parents=True)
    g = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "photos"


def test_full_resolution_views_are_fixed_by_seed_epoch_and_index(tmp_path):
    spec = ViewSpec(global_size=32, local_size=16, n_local=3, patch_size=8, global_window=2, local_window=1)
    dataset = ImageFolderDataset(_folder(tmp_path))
    dataset.views = FullResolutionViews(spec, seed=3)
    item = dataset[2]
    assert item["globals"].shape == (2, 3, 32, 32) and item["locals"].shape == (3, 3, 16, 16)
    assert item["globals"].dtype == torch.uint8 and item["boxes"].shape == (5, 4)
    assert item["aspect"] == pytest.approx(80 / 80) and item["label"] == 0 and item["index"] == 2
    assert "image" not in item
    again = dataset[2]
    assert all(torch.equal(item[k], again[k]) for k in ("globals", "locals", "boxes"))
    dataset.views.set_epoch(1)
    assert not torch.equal(dataset[2]["boxes"], item["boxes"])
    assert len({item_seed(0, e, i) for e in range(3) for i in range(1000)}) == 3000

    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    views = views_from_crops(batch["globals"], batch["locals"], batch["boxes"], spec, torch.Generator().manual_seed(0))
    assert views.globals_.shape == (8, 3, 32, 32) and views.locals_.shape == (12, 3, 16, 16)
    assert views.map_local.shape == (3, 2, 4, 4, 16)
    # View-major: rows [0:B] are every image's first global crop.
    first = batch["globals"][:, 0].float() / 255
    plain = views_from_crops(batch["globals"], batch["locals"], batch["boxes"], spec, torch.Generator().manual_seed(0),
                             photometric=Photometric(enabled=False))
    assert torch.allclose(plain.globals_[:4], normalize(first), atol=1e-6)


def test_crop_mode_resolution_and_errors():
    folder = ["data.name=null", "data.path=/some/folder"]
    assert crop_mode(load_config(None, folder)) == "full"
    assert crop_mode(load_config(None, [*folder, "method=dino"])) == "full"
    assert crop_mode(load_config(None, [*folder, "data.crops=canvas"])) == "canvas"
    assert crop_mode(load_config(None, ["data.name=scenes"])) == "canvas"
    assert crop_mode(load_config(None, [*folder, "method=bootleg"])) == "canvas"
    with pytest.raises(ConfigError, match="built-in data set 'scenes'"):
        load_config(None, ["data.name=scenes", "data.crops=full"])
    with pytest.raises(ConfigError, match="not implemented for method bootleg"):
        load_config(None, [*folder, "method=bootleg", "data.crops=full"])
    with pytest.raises(ConfigError, match="data.crops"):
        load_config(None, [*folder, "data.crops=sharp"])


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_as_sharp_as_its_crops_need(tmp_path):
    # 2400 x 1800 with detail: the crops (224 px from >= 0.25 of the area, 96 px from >= 0.05) need half of it.
    yy, xx = np.mgrid[0:1800, 0:2400]
    noise = np.random.default_rng(2).uniform(0, 255, (1800, 2400))
    array = np.stack([127.5 + 127.5 * np.sin(xx * 0.5 + yy * 0.1), 127.5 + 127.5 * np.sin(xx * 0.05 - yy * 0.33),
                      noise], -1).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "big.jpg", quality=90)
    spec = ViewSpec(n_local=2)
    views = FullResolutionViews(spec, seed=0)
    decoded = []
    original = crops_module.decode_image
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crops_module, "decode_image", lambda *a, **k: decoded.append(original(*a, **k)) or decoded[-1])
        item = views(tmp_path / "big.jpg", 0)
    assert decoded[0][0].size[0] <= 1200 and decoded[0][1] == (2400, 1800)  # decoded at 1/2 or less
    full, _ = original(tmp_path / "big.jpg")
    for pixels, box, size in zip([*item["globals"], *item["locals"]], item["boxes"], [224] * 2 + [96] * 2):
        assert psnr(pixels.numpy(), crop_image(full, box, size)[0].numpy()) >= 30  # (35-50 dB reached)
    assert item["aspect"] == pytest.approx(4 / 3)
