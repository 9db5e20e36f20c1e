"""Embeddings of every image of a data set, written batch by batch to a ``.npy`` file.

The preprocessing is the evaluation transform (``udi.eval.features.eval_crops``: centred
crop, resized, ImageNet-normalised) with the same crop fraction and input size as ``udi eval``;
a folder's crops are cut from the full-resolution file (``udi.data.crops.CenterCropViews``).
The array is a memory map filled as batches arrive, so a folder of any size fits; it is
written under a temporary name and renamed when complete. Next to it, a ``.jsonl`` file names
the image of each row, one JSON string per line (so a file name holding a newline or bytes that
are not UTF-8 still takes exactly one line): the file path for folders, ``NAME:SPLIT:INDEX``
for built-in data sets. A folder's files that cannot be decoded get no row; they are named in
the result (``Embeddings.skipped``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from udi.config import did_you_mean
from udi.data.crops import CenterCropViews
from udi.data.datasets import BUILTIN_DATASETS, ImageFolderDataset, build_dataset, load_image
from udi.eval.features import EVAL_CANVAS_SIZE, FEATURES, eval_crop_fraction, eval_crops, select_features
from udi.models.vit import VisionTransformer

EMBED_FEATURES = (*FEATURES, "patch")


def parse_embed_feature(kind: str, backbone: VisionTransformer) -> str:
    """Check ``kind`` (one of ``EMBED_FEATURES`` or ``lastN``) against the backbone; a clear error otherwise."""
    if kind.startswith("last") and kind[4:].isdigit():
        if not 1 <= int(kind[4:]) <= backbone.depth:
            raise ValueError(f"feature '{kind}': N must lie in 1..{backbone.depth} (the backbone's depth)")
        return kind
    if kind not in EMBED_FEATURES:
        raise ValueError(f"unknown feature '{kind}' (choose from {', '.join(EMBED_FEATURES)}, lastN)")
    if kind in ("cls+", "cls_cat") and backbone.n_cls < 2:
        raise ValueError(f"feature '{kind}' needs a second class token; this backbone has {backbone.n_cls}")
    return kind


def feature_shape(kind: str, backbone: VisionTransformer, image_size: int) -> tuple[int, ...]:
    """Shape of one image's embedding: (D,), (2D,) for cls_cat, (N*D,) for lastN, (patches, D) for patch."""
    D = backbone.embed_dim
    if kind == "patch":
        return ((image_size // backbone.patch_size) ** 2, D)
    if kind == "cls_cat":
        return (2 * D,)
    if kind.startswith("last"):
        return (int(kind[4:]) * D,)
    return (D,)


@torch.no_grad()
def compute_features(backbone: VisionTransformer, crops: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalised crops (B, 3, S, S) -> (B, *feature_shape) for feature ``kind``.

    lastN is DINO's linear feature: the normed [cls] of the last N blocks, concatenated."""
    if kind.startswith("last"):
        n = int(kind[4:])
        hidden = backbone.forward_intermediates(crops, range(backbone.depth - n, backbone.depth))
        return torch.cat([backbone.norm(h[:, 0]) for h in hidden], dim=1)
    tokens = backbone.forward_features(crops)  # (B, n_cls + N, D)
    if kind == "patch":
        return tokens[:, backbone.n_cls:]
    return select_features(tokens, backbone.n_cls, kind)


@dataclass
class Embeddings:
    """Where the embeddings went: ``array`` (.npy, shape ``shape``) and ``items`` (.jsonl, one
    JSON string per row); ``skipped``: the files that could not be decoded (no row)."""

    array: Path
    items: Path
    shape: tuple[int, ...]
    seconds: float
    skipped: list[str]


def embedding_paths(out: str | Path) -> tuple[Path, Path]:
    """(``FILE.npy``, ``FILE.jsonl``); ``.npy`` is added when ``out`` lacks it, as ``np.save`` does."""
    out = Path(out)
    array = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return array, array.with_suffix(".jsonl")


def read_item_names(path: str | Path) -> list[str]:
    """The image names of an embeddings ``.jsonl`` file, one per row of the array."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


class EachFileOnce(Dataset):
    """The items of an image folder without substitution: a file that cannot be decoded gives a
    blank image with ``"decoded": False`` (the training data set would hand out the next file
    instead, which here would give one image two rows).

    ``image_size``: items are the evaluation centre crop at this size, cut from the full-resolution
    file (``CenterCropViews``, as ``udi eval``); None: the whole image on the folder's canvas
    (``embed_dataset`` sets it to its input size)."""

    def __init__(self, folder: ImageFolderDataset, image_size: int | None = None, crop_fraction: float = 0.875):
        self.folder, self.image_size, self.crop_fraction = folder, image_size, crop_fraction
        self.views = None if image_size is None else CenterCropViews(image_size, crop_fraction,
                                                                     folder.max_image_pixels)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        path, label = self.folder.samples[index]
        size = self.folder.canvas_size if self.views is None else self.image_size
        try:
            if self.views is None:
                image, aspect = load_image(path, size, self.folder.max_image_pixels)
            else:
                fields = self.views(path, index)
                image, aspect = fields["image"], fields["aspect"]
            decoded = True
        except Exception:  # PIL raises many types (OSError, ValueError, SyntaxError, ...)
            image, aspect, decoded = torch.zeros(3, size, size, dtype=torch.uint8), 1.0, False
        return {"image": image, "aspect": float(aspect), "label": int(label), "index": index, "decoded": decoded,
                "cropped": self.views is not None}


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]embed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled)


def embed_dataset(
    backbone: VisionTransformer,
    dataset: Dataset,
    feature: str,
    out: str | Path,
    item_name: Callable[[int], str],
    image_size: int,
    crop_fraction: float,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    dtype: str = "float32",
    progress: bool = True,
) -> Embeddings:
    """Write the ``feature`` of every item of ``dataset`` to ``out`` (.npy) and the names of the
    images (``item_name(index)``, index = the item's ``"index"``) to the matching .jsonl.

    Array shape: (n, D) (or (n, 2D), (n, N*D)) for image features, (n, patches, D) for ``patch``;
    n = the items whose ``"decoded"`` is not False (an image folder: wrap it in ``EachFileOnce``).
    """
    start = time.perf_counter()
    if isinstance(dataset, EachFileOnce) and dataset.image_size != image_size:  # crops at the input size
        dataset = EachFileOnce(dataset.folder, image_size, crop_fraction)
    feature = parse_embed_feature(feature, backbone)
    if image_size % backbone.patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {backbone.patch_size}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    array_path, items_path = embedding_paths(out)
    array_path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(dataset), *feature_shape(feature, backbone, image_size))
    partial_array = array_path.with_name(f".{array_path.name}.partial")
    partial_items = items_path.with_name(f".{items_path.name}.partial")
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    skipped: list[str] = []
    try:
        array = np.lib.format.open_memmap(partial_array, mode="w+", dtype=dtype, shape=shape)
        row = 0
        with open(partial_items, "w", encoding="utf-8") as names, _progress(progress) as bar:
            task = bar.add_task("embed", total=len(dataset))
            for batch in loader:
                decoded = batch.get("decoded", torch.ones(len(batch["index"]), dtype=torch.bool))
                skipped += [item_name(int(i)) for i in batch["index"][~decoded]]
                bar.advance(task, len(decoded))
                if not decoded.any():
                    continue
                images = batch["image"][decoded].to(device, non_blocking=True)
                cropped = batch.get("cropped")
                crops = eval_crops(images, batch["aspect"][decoded], image_size, crop_fraction,
                                   None if cropped is None else cropped[decoded])
                values = compute_features(backbone, crops, feature)
                array[row: row + len(values)] = values.float().cpu().numpy().astype(dtype, copy=False)
                names.writelines(json.dumps(item_name(int(i))) + "\n" for i in batch["index"][decoded])
                row += len(values)
        if row == 0:
            raise ValueError(f"none of the {len(dataset)} images could be decoded (first: {skipped[0]})")
        array.flush()
        del array  # close the memory map before renaming (or shrinking)
        if row < shape[0]:
            _shrink(partial_array, row)
        os.replace(partial_array, array_path)
        os.replace(partial_items, items_path)
    except BaseException:
        partial_array.unlink(missing_ok=True)
        partial_items.unlink(missing_ok=True)
        raise
    return Embeddings(array_path, items_path, (row, *shape[1:]), round(time.perf_counter() - start, 2), skipped)


def _shrink(path: Path, rows: int, chunk: int = 4096) -> None:
    """Keep the first ``rows`` rows of the .npy at ``path`` (copied chunk by chunk: any size fits)."""
    full = np.load(path, mmap_mode="r")
    smaller = path.with_name(path.name + ".rows")
    out = np.lib.format.open_memmap(smaller, mode="w+", dtype=full.dtype, shape=(rows, *full.shape[1:]))
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        out[start:stop] = full[start:stop]
    out.flush()
    del out, full
    os.replace(smaller, path)


def embedding_dataset(data: str, split: str = "all") -> tuple[Dataset, Callable[[int], str], float]:
    """The data set of ``data`` (a built-in name or a folder), a function naming item ``index``
    (the image path, or ``NAME:SPLIT:INDEX``), and the evaluation crop fraction for it."""
    if data in BUILTIN_DATASETS:
        dataset = build_dataset(name=data, split=split)
        return dataset, lambda i: f"{data}:{split}:{i}", eval_crop_fraction(data)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(
            f"data '{data}' is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) nor an existing folder"
            f"{did_you_mean(data, BUILTIN_DATASETS)}"
        )
    folder = build_dataset(path=str(path), split=split, canvas_size=EVAL_CANVAS_SIZE)
    assert isinstance(folder, ImageFolderDataset)
    return EachFileOnce(folder), lambda i: str(folder.samples[i][0]), eval_crop_fraction(data)


def default_num_workers(data: str) -> int:
    """Decoding processes: none for the in-memory built-ins, else up to 8 leaving one core free."""
    if data in BUILTIN_DATASETS:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))
