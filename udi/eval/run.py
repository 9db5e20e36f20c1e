"""Run evaluation protocols on a backbone and a labelled data set (used by the CLI and the demo)."""

from __future__ import annotations

from pathlib import Path

import torch

from udi.data.datasets import BUILTIN_DATASETS, build_dataset
from udi.eval.features import extract_features
from udi.eval.knn import knn_accuracy
from udi.models.vit import VisionTransformer


def labelled_splits(data: str, canvas_size: int = 256, scenes_size: int = 32, seed: int = 0):
    """(train, val) data sets of a built-in name or of a folder with train/ and val/ subfolders."""
    if data in BUILTIN_DATASETS:
        kwargs = {"name": data, "scenes_size": scenes_size, "seed": seed}
    else:
        root = Path(data)
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise FileNotFoundError(
                f"evaluation data '{data}' is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
                "nor a folder with train/ and val/ subfolders"
            )
        kwargs = {"path": str(root), "canvas_size": canvas_size}
    return build_dataset(split="train", **kwargs), build_dataset(split="val", **kwargs)


def run_knn(
    backbone: VisionTransformer,
    data: str,
    features: str = "cls",
    ks=(10, 20, 100, 200),
    temperature: float = 0.07,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, float]:
    """DINO k-NN on ``data``'s train/val split; ``{"knn_top1_k20": ..., ...}``."""
    train_set, val_set = labelled_splits(data)
    image_size = image_size or backbone.img_size
    crop_fraction = 1.0 if data in BUILTIN_DATASETS else 0.875  # small built-in images: keep them whole
    common = dict(kinds=(features,), image_size=image_size, crop_fraction=crop_fraction,
                  batch_size=batch_size, device=device, progress=progress)
    train_feats, train_labels = extract_features(backbone, train_set, description="train features", **common)
    val_feats, val_labels = extract_features(backbone, val_set, description="val features", **common)
    return knn_accuracy(train_feats[features], train_labels, val_feats[features], val_labels, ks, temperature)
