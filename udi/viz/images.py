"""Images to look at: what the model is given and what is shown, for files, built-in photos and data sets.

Every image is cut to its central square (the whole shorter side, as the evaluation of built-in
data sets does) and resized with PIL's antialiased bicubic filter twice: to the model's input
size, and to ``DISPLAY_SIZE`` for the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from udi.data.augment import normalize
from udi.data.datasets import BUILTIN_DATASETS, _to_rgb, build_dataset

PHOTOS = ("astronaut", "coffee", "chelsea")  # bundled with scikit-image: no download
DISPLAY_SIZE = 224
MIN_VISIBLE_SIZE = 64  # data set images smaller than this are replaced by the photos in reports


@dataclass
class View:
    """One image prepared for a model and for display.

    name: a short label (file stem, photo name, data set item).
    model_input: (3, S, S) float32, ImageNet-normalised, S = the model's input size.
    display: (DISPLAY_SIZE, DISPLAY_SIZE, 3) float32 in [0, 1], the same square as ``model_input``.
    """

    name: str
    model_input: torch.Tensor
    display: np.ndarray


def photo(name: str) -> Image.Image:
    """A built-in photo of scikit-image (``PHOTOS``) as an RGB PIL image."""
    if name not in PHOTOS:
        raise ValueError(f"unknown built-in photo {name!r} (choose from {', '.join(PHOTOS)})")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _not_found(source: str | Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"image not found: {source} (expected an image file or a built-in photo: {', '.join(PHOTOS)})"
    )


def open_image(source: str | Path) -> Image.Image:
    """An image file (EXIF orientation applied, any mode converted to RGB) or a built-in photo name."""
    path = Path(source)
    if path.is_file():
        try:
            with Image.open(path) as im:
                return _to_rgb(ImageOps.exif_transpose(im))
        except Exception as error:  # PIL raises many types for foreign files
            raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    if str(source) in PHOTOS:
        return photo(str(source))
    raise _not_found(source)


def check_sources(sources: list[str | Path]) -> None:
    """Fail early (before loading weights) if a source is neither a file nor a built-in photo name."""
    for source in sources:
        if not Path(source).is_file() and str(source) not in PHOTOS:
            raise _not_found(source)


def make_view(image: Image.Image, image_size: int, name: str) -> View:
    """The central square of ``image`` at the model's ``image_size`` and at ``DISPLAY_SIZE``."""
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    model = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
    pixels = torch.from_numpy(np.asarray(model, dtype=np.float32) / 255.0).permute(2, 0, 1)
    # Tiny images (32 px scenes) stay crisp blocks instead of a blur when enlarged.
    resample = Image.Resampling.NEAREST if DISPLAY_SIZE >= 2 * side else Image.Resampling.BICUBIC
    display = image.resize((DISPLAY_SIZE, DISPLAY_SIZE), resample, box=box)
    return View(name, normalize(pixels[None])[0], np.asarray(display, dtype=np.float32) / 255.0)


def load_views(sources: list[str | Path], image_size: int) -> list[View]:
    """Views of image files or built-in photo names; a clear error for the first unreadable one."""
    return [make_view(open_image(s), image_size, Path(s).stem if Path(s).is_file() else str(s)) for s in sources]


def _evenly_spaced(n: int, count: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})


def dataset_views(data: str | None, count: int, image_size: int, scenes_size: int = 32) -> tuple[list[View], str]:
    """``count`` images of data set ``data`` (a built-in name or a folder; its val split if it has
    one), evenly spaced through it, or the built-in photos when its images are smaller than
    ``MIN_VISIBLE_SIZE`` or it cannot be found. Returns the views and a sentence saying which."""
    photos = lambda reason: ([make_view(photo(p), image_size, p) for p in PHOTOS[:count]],
                             f"{reason}: built-in photos ({', '.join(PHOTOS[:count])}) instead")
    if data is None:
        return photos("no data set given")
    if data in BUILTIN_DATASETS:
        dataset = build_dataset(name=data, split="val", scenes_size=scenes_size)
        side = dataset[0]["image"].shape[-1]
        if side < MIN_VISIBLE_SIZE:
            return photos(f"the {side} px images of '{data}' are too small to look at")
        views = []
        for i in _evenly_spaced(len(dataset), count):
            array = dataset[i]["image"].permute(1, 2, 0).numpy()
            views.append(make_view(Image.fromarray(array), image_size, f"{data} val #{i}"))
        return views, f"{len(views)} images of the val split of '{data}'"
    try:
        dataset = build_dataset(path=data, split="val")
    except (FileNotFoundError, NotADirectoryError) as error:
        return photos(f"data folder unavailable ({error})")
    paths = [dataset.samples[i][0] for i in _evenly_spaced(len(dataset), count)]
    return load_views(paths, image_size), f"{len(paths)} images of {dataset.root}"
