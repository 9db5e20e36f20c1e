"""Frozen features of a backbone over a labelled data set (the evaluation transform:
a centred crop of the whole image, resized, ImageNet-normalised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from udi.data.augment import center_box, crop_resize, normalize
from udi.models.vit import VisionTransformer

FEATURES = ("cls", "cls+", "cls_cat", "patch_mean")


def select_features(tokens: torch.Tensor, n_cls: int, kind: str) -> torch.Tensor:
    """tokens (B, n_cls + N, D) after the final norm -> (B, D) or (B, 2D) for ``cls_cat``."""
    if kind == "cls":
        return tokens[:, 0]
    if kind in ("cls+", "cls_cat") and n_cls < 2:
        raise ValueError(f"feature '{kind}' needs a second class token; this backbone has {n_cls}")
    if kind == "cls+":
        return tokens[:, 1]
    if kind == "cls_cat":
        return tokens[:, :2].flatten(1)
    if kind == "patch_mean":
        return tokens[:, n_cls:].mean(dim=1)
    raise ValueError(f"unknown feature '{kind}' (choose from {', '.join(FEATURES)})")


@torch.no_grad()
def extract_features(
    backbone: VisionTransformer,
    dataset: Dataset,
    kinds: tuple[str, ...] = ("cls",),
    image_size: int = 224,
    crop_fraction: float = 0.875,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    description: str = "features",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Returns ``({kind: (n, dim) float32}, labels (n,) int64)`` in dataset order."""
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    outputs: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    labels = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            images = batch["image"].to(device)
            boxes = center_box(batch["aspect"].to(device), crop_fraction)
            crops = normalize(crop_resize(images, boxes, image_size))
            tokens = backbone.forward_features(crops)
            for kind in kinds:
                outputs[kind].append(select_features(tokens, backbone.n_cls, kind).float().cpu())
            labels.append(torch.as_tensor(batch["label"]))
            bar.advance(task, len(images))
    return {k: torch.cat(v) for k, v in outputs.items()}, torch.cat(labels)


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=1)
