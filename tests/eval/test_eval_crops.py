"""Folder evaluation at the reference's resolution: the centre crop is cut from the full-resolution
file (udi.data.crops.CenterCropViews), as DINO's Resize(256) + CenterCrop(224), not from the canvas."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import udi
from udi.data.crops import CenterCropViews
from udi.eval.features import eval_crops, extract_bank, on_canvas
from udi.eval.suite import FeatureCache, SuiteOptions, _plan, labelled_splits, run_suite
from udi.io.checkpoint import export_backbone
from udi.models.vit import build_vit

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def high_frequency(width, height, seed=0):
    """Stripes (period 4.1 and 7.3 px) and pixel noise: what a canvas of 256 px loses."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    stripes = 50 * np.sin(2 * np.pi * (x / 4.1 + y / 13.0)) + 30 * np.sin(2 * np.pi * (x / 13.0 + y / 7.3))
    pixels = 127.5 + stripes[..., None] * np.array([1.0, 0.6, -0.8]) + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def reference(image, resize=256, crop=224):
    """DINO's evaluation transform in PIL: shorter side to ``resize`` (bicubic, antialiased; the
    longer side truncated as torchvision's Resize), centre crop (torchvision's CenterCrop rounding)."""
    w, h = image.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    image = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return torch.from_numpy(np.array(image.crop((left, top, left + crop, top + crop)))).permute(2, 0, 1)


def psnr(a, b):
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def to_uint8(normalised):
    return (normalised * STD + MEAN).mul(255).round().clamp(0, 255)


@pytest.fixture
def photos(tmp_path):
    """A labelled folder of 500 x 375 landscape and 375 x 500 portrait PNGs (train/ and val/)."""
    root = tmp_path / "photos"
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(("a", "b")):
            folder = root / split / name
            folder.mkdir(parents=True)
            high_frequency(500, 375, seed=4 * s + 2 * c).save(folder / "landscape.png")
            high_frequency(375, 500, seed=4 * s + 2 * c + 1).save(folder / "portrait.png")
    return root


def test_the_eval_input_is_the_reference_crop_of_the_full_resolution_file(photos):
    _, val = labelled_splits(str(photos), eval_size=224)
    _, canvas = labelled_splits(str(photos))  # the canvas path of before
    for i, (path, _) in enumerate(val.samples):
        item, expected = val[i], reference(Image.open(path))
        assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.uint8 and item["cropped"]
        # what the feature extraction feeds the backbone: the item as it is, normalised
        fed = eval_crops(item["image"][None], torch.tensor([item["aspect"]]), 224, 0.875, torch.tensor([True]))[0]
        new = psnr(to_uint8(fed), expected)
        old_item = canvas[i]
        old = psnr(to_uint8(eval_crops(old_item["image"][None], torch.tensor([old_item["aspect"]]), 224, 0.875)[0]),
                   expected)
        assert new >= 30, (path.name, new)  # reached: 85-95 dB (rounding of one resize instead of two)
        assert old < 26, (path.name, old)  # the canvas path: about 19-24 dB
        assert new - old > 40


def test_portrait_and_landscape_keep_their_aspect(photos, tmp_path):
    views = CenterCropViews(224)
    land, port = high_frequency(500, 375), high_frequency(375, 500)
    for image, aspect in ((land, 4 / 3), (port, 3 / 4)):
        item = views.crop(image)
        assert item["aspect"] == pytest.approx(aspect) and psnr(item["image"], reference(image)) >= 30
    # a wide and a tall image: the crop is the centre of the shorter side, whichever it is
    for size in ((1000, 250), (250, 1000)):
        left, top, right, bottom = views.box(*size)
        assert right - left == pytest.approx(bottom - top, abs=1) and right - left == pytest.approx(0.875 * 250, abs=1)
        assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx((size[0] / 2, size[1] / 2), abs=2)
    # a JPEG stored landscape with an EXIF rotation is a portrait, as udi eval decodes every file
    exif = Image.Exif()
    exif[0x0112] = 6
    land.save(tmp_path / "turned.jpg", quality=95, exif=exif)
    item = views(tmp_path / "turned.jpg")
    assert item["aspect"] == pytest.approx(3 / 4)
    assert psnr(item["image"], reference(ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")))) >= 30


def test_a_large_jpeg_is_drafted_only_as_far_as_the_crop_spans_twice_its_size(tmp_path, monkeypatch):
    high_frequency(2000, 1500).save(tmp_path / "big.jpg", quality=95)
    high_frequency(500, 375).save(tmp_path / "small.jpg", quality=95)
    asked = []
    from PIL.JpegImagePlugin import JpegImageFile

    real = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: asked.append(size) or real(self, mode, size))
    views = CenterCropViews(224)
    big = views(tmp_path / "big.jpg")["image"]
    assert asked and 2 * 224 <= min(asked[-1]) < 1500 / 2 + 1  # the crop (1313 px) spans >= 448 decoded px
    assert psnr(big, reference(Image.open(tmp_path / "big.jpg"))) >= 30
    asked.clear()
    small = views(tmp_path / "small.jpg")["image"]
    assert not asked and psnr(small, reference(Image.open(tmp_path / "small.jpg"))) >= 60  # full resolution


def test_the_suite_feeds_the_crops_and_the_augmented_probe_the_canvas(photos, tmp_path, monkeypatch):
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=8, img_size=16, n_cls=2, depth=2).eval()
    seen = {}
    from udi.eval import runners

    def fake_linear(backbone, feature_fn, train_set, *args, **kwargs):
        seen["linear"] = train_set[0]
        return {"linear_top1_best": 50.0, "linear_top1_final": 50.0}

    monkeypatch.setattr(runners, "train_linear_augmented", fake_linear)
    results = run_suite(vit, str(photos), ["knn", "attnstats", "linear"], options=SuiteOptions(
        progress=False, linear_augment=True, linear_epochs=1, attn_images=4))
    assert results["source"]["preprocessing"] == "center-crop-full-resolution"
    assert seen["linear"]["image"].shape == (3, 256, 256) and "cropped" not in seen["linear"]  # random crops: canvas
    train, val = labelled_splits(str(photos), eval_size=16)
    assert on_canvas(train)[0]["image"].shape == (3, 256, 256) and train[0]["image"].shape == (3, 16, 16)
    bank, _ = extract_bank(vit, val, image_size=16, progress=False)
    expected = torch.stack([CenterCropViews(16)(p)["image"] for p, _ in val.samples])
    with torch.no_grad():
        direct = vit.forward_features((expected.float() / 255 - MEAN) / STD)[:, 0]
    torch.testing.assert_close(bank["cls"], direct)
    with pytest.raises(ValueError, match="centre crops of"):  # a crop at another size than asked is refused
        extract_bank(vit, val, image_size=32, progress=False)


def test_the_api_transform_equals_the_eval_input(photos, tmp_path):
    torch.manual_seed(0)
    export_backbone(tmp_path / "backbone.safetensors", build_vit("vit_nano", patch_size=4, img_size=16, n_cls=2))
    backbone = udi.load(tmp_path / "backbone.safetensors", image_size=224)
    _, val = labelled_splits(str(photos), eval_size=224)
    for i, (path, _) in enumerate(val.samples):
        fed = eval_crops(val[i]["image"][None], torch.tensor([val[i]["aspect"]]), 224, 0.875, torch.tensor([True]))
        torch.testing.assert_close(backbone.transform(str(path)), fed[0])
        torch.testing.assert_close(backbone.transform(Image.open(path)), fed[0])


def _key_before_the_change(cache, split):
    """FeatureCache's key as written before the preprocessing joined it."""
    fields = {"weights": cache.ident, "data": cache.data, "split": split, **cache.plan,
              "max_images": cache.options.max_images, "image_size": cache.image_size,
              "crop_fraction": cache.crop_fraction, "max_token_images": cache.options.max_token_images}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def test_a_feature_cache_of_the_canvas_preprocessing_is_recomputed(photos, tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=8, img_size=16, n_cls=2, depth=2).eval()
    train, val = labelled_splits(str(photos), eval_size=16)
    options, out = SuiteOptions(progress=False), tmp_path / "eval"

    def cache():
        return FeatureCache(vit, str(photos), train, val, _plan(["knn"], {"knn": ["cls"]}), options, "cpu", out)

    fresh, _ = cache().get("val")
    old = cache()
    stale = {"cls": torch.full_like(fresh["cls"], 7.0)}  # as the canvas path left it
    torch.save({"key": _key_before_the_change(old, "val"), "bank": stale, "targets": {"label": torch.zeros(4)}},
               out / "features_val.pt")
    bank, _ = old.get("val")
    torch.testing.assert_close(bank["cls"], fresh["cls"])  # recomputed, not served
    assert torch.load(out / "features_val.pt", weights_only=True)["key"] == old._key("val")
