"""Embeddings of every image of a data set, written batch by batch to a ``.npy`` file.

The preprocessing is the evaluation transform (``udi.eval.features.eval_crops``: centred
crop, resized, ImageNet-normalised) with the same crop fraction and input size as ``udi eval``.
The array is a memory map filled as batches arrive, so a folder of any size fits; it is
written under a temporary name and renamed when complete. Next to it, a ``.txt`` file names
the image of each row: the file path for folders, ``NAME:SPLIT:INDEX`` for built-in data sets.
"""

from __future__ import annotations

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

from udi.data.datasets import BUILTIN_DATASETS, ImageFolderDataset, build_dataset
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
    """Where the embeddings went: ``array`` (.npy, shape ``shape``) and ``items`` (.txt, one name per row)."""

    array: Path
    items: Path
    shape: tuple[int, ...]
    seconds: float


def embedding_paths(out: str | Path) -> tuple[Path, Path]:
    """(``FILE.npy``, ``FILE.txt``); ``.npy`` is added when ``out`` lacks it, as ``np.save`` does."""
    out = Path(out)
    array = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    return array, array.with_suffix(".txt")


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
    images (``item_name(index)``, index = the item's ``"index"``) to the matching .txt.

    Array shape: (n, D) (or (n, 2D), (n, N*D)) for image features, (n, patches, D) for ``patch``.
    """
    start = time.perf_counter()
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
    try:
        array = np.lib.format.open_memmap(partial_array, mode="w+", dtype=dtype, shape=shape)
        row = 0
        with open(partial_items, "w") as names, _progress(progress) as bar:
            task = bar.add_task("embed", total=len(dataset))
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                crops = eval_crops(images, batch["aspect"], image_size, crop_fraction)
                values = compute_features(backbone, crops, feature)
                array[row: row + len(values)] = values.float().cpu().numpy().astype(dtype, copy=False)
                names.writelines(f"{item_name(int(i))}\n" for i in batch["index"])
                row += len(values)
                bar.advance(task, len(values))
        array.flush()
        del array  # close the memory map before renaming
        os.replace(partial_array, array_path)
        os.replace(partial_items, items_path)
    except BaseException:
        partial_array.unlink(missing_ok=True)
        partial_items.unlink(missing_ok=True)
        raise
    return Embeddings(array_path, items_path, shape, round(time.perf_counter() - start, 2))


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
        )
    dataset = build_dataset(path=str(path), split=split, canvas_size=EVAL_CANVAS_SIZE)
    assert isinstance(dataset, ImageFolderDataset)
    return dataset, lambda i: str(dataset.samples[i][0]), eval_crop_fraction(data)


def default_num_workers(data: str) -> int:
    """Decoding processes: none for the in-memory built-ins, else up to 8 leaving one core free."""
    if data in BUILTIN_DATASETS:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))
