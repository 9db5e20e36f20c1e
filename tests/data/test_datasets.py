import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from udi.data.datasets import (
    BUILTIN_DATASETS,
    IMAGE_EXTENSIONS,
    ArrayDataset,
    ImageFolderDataset,
    build_dataset,
    builtin_split_indices,
    load_image,
    num_classes,
)
from udi.data.scenes import ScenesDataset

CANVAS = 24


def _save(path, size=(40, 30), colour=(200, 30, 60), mode="RGB", fmt=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt, **kw)
    return path


def _check_item(item, canvas=CANVAS):
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, canvas, canvas)
    assert isinstance(item["aspect"], float) and isinstance(item["label"], int)
    assert isinstance(item["index"], int) and isinstance(item["failed"], int)


def test_constants():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
    assert BUILTIN_DATASETS == ("scenes", "mnist5k", "digits")


def test_imagefolder_layout(tmp_path):
    _save(tmp_path / "dog" / "b.png")
    _save(tmp_path / "dog" / "a.JPG", fmt="JPEG")  # extension match is case-insensitive
    _save(tmp_path / "cat" / "z.bmp")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _save(tmp_path / "cat" / ".hidden.png")
    (tmp_path / "empty_class").mkdir()
    ds = ImageFolderDataset(tmp_path, canvas_size=CANVAS)
    assert ds.classes == ["cat", "dog", "empty_class"]
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        ("cat/z.bmp", 0), ("dog/a.JPG", 1), ("dog/b.png", 1),
    ]
    assert num_classes(ds) == 3
    for i in range(len(ds)):
        item = ds[i]
        _check_item(item)
        assert item["label"] == ds.samples[i][1] and item["index"] == i and item["failed"] == 0
        assert item["aspect"] == pytest.approx(40 / 30)


def test_flat_and_nested_folders_are_unlabeled(tmp_path):
    flat = tmp_path / "flat"
    for name in ("b.png", "a.webp", "c.tiff"):
        _save(flat / name)
    ds = ImageFolderDataset(flat, canvas_size=CANVAS)
    assert [p.name for p, _ in ds.samples] == ["a.webp", "b.png", "c.tiff"]
    assert ds.classes == [] and num_classes(ds) == 0 and ds[0]["label"] == -1

    nested = tmp_path / "nested"
    _save(nested / "2020" / "01" / "x.png")
    _save(nested / "2021" / "y.png")
    _save(nested / "z.png")
    ds = ImageFolderDataset(nested, canvas_size=CANVAS)
    assert len(ds) == 3 and {ds[i]["label"] for i in range(3)} == {-1}


@pytest.mark.parametrize(
    "mode, colour, fmt, suffix",
    [
        ("L", 128, "PNG", "png"),
        ("1", 1, "PNG", "png"),
        ("P", 3, "GIF", "gif"),
        ("CMYK", (0, 255, 255, 0), "JPEG", "jpg"),
        ("CMYK", (0, 255, 255, 0), "TIFF", "tif"),
        ("RGBA", (255, 0, 0, 255), "PNG", "png"),
        ("LA", (200, 255), "PNG", "png"),
        ("I;16", 65535, "PNG", "png"),
        ("RGB", (10, 20, 30), "PPM", "ppm"),
        ("L", 77, "PPM", "pgm"),
        ("RGB", (10, 20, 30), "WEBP", "webp"),
    ],
)
def test_modes_become_rgb(tmp_path, mode, colour, fmt, suffix):
    path = _save(tmp_path / f"im.{suffix}", size=(50, 20), colour=colour, mode=mode, fmt=fmt)
    item = ImageFolderDataset(tmp_path, canvas_size=CANVAS)[0]
    _check_item(item)
    assert item["aspect"] == pytest.approx(2.5)
    assert item["failed"] == 0, path


def test_alpha_and_palette_transparency_composite_on_black(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (0, 0, 8, 16))  # left half opaque green
    rgba.save(tmp_path / "a.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 255, 255, 255, 255] + [0] * 762)
    pal.paste(0, (0, 0, 8, 16))  # left half blue, right half white but transparent
    pal.save(tmp_path / "b.png", transparency=1)
    ds = ImageFolderDataset(tmp_path, canvas_size=16)
    a, b = ds[0]["image"], ds[1]["image"]
    assert a[:, :, :6].float().mean((1, 2)).tolist() == [0, 255, 0]
    assert a[:, :, 10:].max() == 0
    assert b[:, :, :6].float().mean((1, 2)).tolist() == [0, 0, 255]
    assert b[:, :, 10:].max() == 0


def test_16bit_is_rescaled(tmp_path):
    _save(tmp_path / "a.png", size=(8, 8), colour=65535, mode="I;16")
    _save(tmp_path / "b.png", size=(8, 8), colour=32896, mode="I;16")
    ds = ImageFolderDataset(tmp_path, canvas_size=8)
    assert ds[0]["image"].unique().tolist() == [255]
    assert ds[1]["image"].unique().tolist() == [128]


def test_resized_without_keeping_aspect(tmp_path):
    im = Image.new("RGB", (64, 16), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 32, 16))  # left half white
    im.save(tmp_path / "wide.png")
    item = ImageFolderDataset(tmp_path, canvas_size=CANVAS)[0]
    assert item["aspect"] == pytest.approx(4.0)
    img = item["image"].float()
    assert img[:, :, :10].min() > 240 and img[:, :, 14:].max() < 15


def test_exif_rotation_sets_aspect(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x20, displayed 20x40
    Image.new("RGB", (40, 20), (90, 90, 90)).save(tmp_path / "r.jpg", exif=exif)
    assert ImageFolderDataset(tmp_path, canvas_size=CANVAS)[0]["aspect"] == pytest.approx(0.5)


def test_jpeg_draft_keeps_aspect(tmp_path):
    Image.new("RGB", (1000, 300), (90, 10, 200)).save(tmp_path / "big.jpg")
    item = ImageFolderDataset(tmp_path, canvas_size=CANVAS)[0]
    _check_item(item)
    assert item["aspect"] == pytest.approx(1000 / 300)


def _folder_with_corrupt(tmp_path, corrupt):
    for i in range(4):
        _save(tmp_path / f"{i}.png", colour=(i * 50, 0, 0))
    good = (tmp_path / "0.png").read_bytes()
    for i in corrupt:
        (tmp_path / f"{i}.png").write_bytes(b"definitely not a png" if i % 2 else good[: len(good) // 2])
    return tmp_path


def test_corrupt_file_is_skipped_with_warning(tmp_path):
    ds = ImageFolderDataset(_folder_with_corrupt(tmp_path, [1]), canvas_size=CANVAS)
    with pytest.warns(UserWarning, match=r"1\.png"):
        item = ds[1]
    assert item["index"] == 2 and item["failed"] == 1 and item["image"][0, 0, 0] == 100
    assert ds.num_failed == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[0]["failed"] == 0


def test_consecutive_and_wrapping_failures(tmp_path):
    ds = ImageFolderDataset(_folder_with_corrupt(tmp_path, [2, 3]), canvas_size=CANVAS)
    with pytest.warns(UserWarning) as record:
        item = ds[2]
    assert item["index"] == 0 and item["failed"] == 2
    messages = " ".join(str(w.message) for w in record)
    assert "2.png" in messages and "3.png" in messages
    assert ds.num_failed == 2


def test_all_corrupt_raises(tmp_path):
    ds = ImageFolderDataset(_folder_with_corrupt(tmp_path, [0, 1, 2, 3]), canvas_size=CANVAS)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="no decodable image"):
        ds[0]


def test_missing_and_empty_folders(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataset(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_dataset(path=str(missing))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no images \(\.jpg.*found under .*empty"):
        build_dataset(path=str(empty))
    with pytest.raises(NotADirectoryError):
        ImageFolderDataset(empty / "sub" / "readme.txt")


def test_train_val_subfolders(tmp_path):
    _save(tmp_path / "train" / "a" / "1.png")
    _save(tmp_path / "train" / "b" / "2.png")
    _save(tmp_path / "val" / "a" / "3.png")
    train = build_dataset(path=str(tmp_path), split="train", canvas_size=CANVAS)
    val = build_dataset(path=str(tmp_path), split="val", canvas_size=CANVAS)
    everything = build_dataset(path=str(tmp_path), split="all", canvas_size=CANVAS)
    assert [p.name for p, _ in train.samples] == ["1.png", "2.png"] and train.classes == ["a", "b"]
    assert [p.name for p, _ in val.samples] == ["3.png"] and val.classes == ["a"]
    assert len(everything) == 3 and num_classes(everything) == 0  # two levels deep: unlabeled


def test_plain_folder_serves_every_split(tmp_path):
    _save(tmp_path / "x.png")
    for split in ("train", "val", "all"):
        assert len(build_dataset(path=str(tmp_path), split=split, canvas_size=CANVAS)) == 1


def test_folder_collates(tmp_path):
    for i, size in enumerate([(30, 30), (60, 20), (20, 50)]):
        _save(tmp_path / f"{i}.png", size=size)
    batch = next(iter(DataLoader(build_dataset(path=str(tmp_path), canvas_size=CANVAS), batch_size=3)))
    assert batch["image"].shape == (3, 3, CANVAS, CANVAS) and batch["image"].dtype == torch.uint8
    assert batch["aspect"].tolist() == pytest.approx([1.0, 3.0, 0.4])
    assert batch["label"].tolist() == [-1, -1, -1] and batch["failed"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("name, size, n_train, n_val", [("mnist5k", 28, 4000, 1000), ("digits", 8, 1438, 359)])
def test_array_builtins(name, size, n_train, n_val):
    train = build_dataset(name, split="train")
    val = build_dataset(name, split="val", seed=123)  # the split does not depend on the seed
    everything = build_dataset(name, split="all")
    assert isinstance(train, ArrayDataset)
    assert (len(train), len(val), len(everything)) == (n_train, n_val, n_train + n_val)
    assert num_classes(train) == 10 and train.classes == [str(d) for d in range(10)]
    item = train[0]
    _check_item(item, canvas=size)
    assert item["aspect"] == 1.0 and item["failed"] == 0 and 0 <= item["label"] < 10
    assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][0], item["image"][2])
    assert max(int(everything[i]["image"].max()) for i in range(50)) == 255
    labels = everything.labels
    i_train, i_val = builtin_split_indices(labels, "train"), builtin_split_indices(labels, "val")
    assert not set(i_train) & set(i_val) and len(set(i_train) | set(i_val)) == len(labels)
    assert np.array_equal(train.labels, labels[i_train])
    assert torch.equal(val.images, build_dataset(name, split="val").images)
    # Stratified: each class keeps about 80% of its images in train.
    for c in range(10):
        assert abs((train.labels == c).sum() / (labels == c).sum() - 0.8) < 0.01


def test_array_dataset_validates():
    with pytest.raises(ValueError):
        ArrayDataset(np.zeros((2, 4, 4), np.float32), np.zeros(2), classes=["a"])
    ds = ArrayDataset(np.zeros((2, 4, 6, 3), np.uint8), np.array([0, 1]), classes=["a", "b"])
    assert ds[1]["image"].shape == (3, 4, 6) and ds[1]["aspect"] == 1.5 and ds[1]["label"] == 1


def test_scenes_builtin():
    ds = build_dataset("scenes", split="val", scenes_size=16, scenes_num_images=10, seed=3)
    assert isinstance(ds, ScenesDataset) and len(ds) == 10 and ds[0]["image"].shape == (3, 16, 16)
    assert ds.split == "val" and ds.seed == 3
    assert build_dataset("scenes", split="all").split == "train"
    assert len(build_dataset("scenes")) == 10_000
    assert num_classes(ds) == 10 and num_classes(Subset(ds, [0, 1])) == 10


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="scenes, mnist5k, digits"):
        build_dataset("imagenet")
    with pytest.raises(ValueError):
        build_dataset()
    with pytest.raises(ValueError):
        build_dataset("scenes", path=str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        build_dataset("scenes", split="test")


def test_a_symlink_loop_lists_each_file_once(tmp_path):
    """Before: `loop -> .` made the list many times longer (6519 paths for 159 files)."""
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png")
    os.symlink(".", tmp_path / "a" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "again")  # the same folder under a second name
    paths = [p for p, _ in ImageFolderDataset(tmp_path, canvas_size=CANVAS).samples]
    assert len(paths) == 3 and len({p.resolve() for p in paths}) == 3


def test_only_regular_files_are_images(tmp_path):
    """Before: a FIFO named like an image blocked the reader forever."""
    _save(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink(tmp_path / "missing.png", tmp_path / "dangling.png")
    assert [p.name for p, _ in ImageFolderDataset(tmp_path, canvas_size=CANVAS).samples] == ["good.png"]


def test_an_image_above_max_image_pixels_is_skipped_and_named(tmp_path):
    """Before: a 144-Mpixel PNG was decoded in full (38 s, GBs) with only PIL's warning."""
    _save(tmp_path / "a.png")
    Image.new("RGB", (400, 300)).save(tmp_path / "b_big.png")
    _save(tmp_path / "c.png")
    ds = ImageFolderDataset(tmp_path, canvas_size=CANVAS, max_image_pixels=100_000)
    with pytest.warns(UserWarning, match=r"b_big\.png .*400 x 300 pixels, more than data.max_image_pixels"):
        item = ds[1]
    assert item["failed"] == 1 and item["index"] == 2
    jpeg = tmp_path / "d.jpg"
    Image.new("RGB", (800, 800)).save(jpeg)  # 640,000 pixels, decoded at 1/4 scale for a 32-px canvas
    image, _ = load_image(jpeg, 32, max_pixels=100_000)
    assert image.shape == (3, 32, 32)
