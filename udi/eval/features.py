"""Frozen features of a backbone over a labelled data set (the evaluation transform:
a centred crop of the whole image, resized, ImageNet-normalised).

Folder images come as that crop already, cut from the full-resolution file in the data loader
(:class:`udi.data.crops.CenterCropViews`, items with ``cropped``); the built-in data sets (stored at
their native size) as whole images, cropped here on the device (``eval_crops``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset, Subset

from udi.data.augment import center_box, crop_resize, normalize, to_float
from udi.models.vit import VisionTransformer

FEATURES = ("cls", "cls+", "cls_cat", "patch_mean")
EVAL_CANVAS_SIZE = 256  # folder images on this canvas: for the augmented linear probe's random crops
# The folder evaluation input, in the feature cache's key (a cache of an older preprocessing is recomputed):
# the centre crop cut from the full-resolution file (before: from the EVAL_CANVAS_SIZE canvas).
FOLDER_PREPROCESSING = "center-crop-full-resolution"
TARGET_KEYS = ("label", "present", "color", "position", "count", "background", "mask")


def eval_crop_fraction(data: str) -> float:
    """Side of the evaluation crop relative to the shorter image side for data set ``data``."""
    from udi.data.datasets import BUILTIN_DATASETS

    return 1.0 if data in BUILTIN_DATASETS else 0.875  # small built-in images: keep them whole


def eval_preprocessing(data: str) -> str:
    """How the evaluation input of ``data`` is made (a field of the feature cache's key)."""
    from udi.data.datasets import BUILTIN_DATASETS

    return "native" if data in BUILTIN_DATASETS else FOLDER_PREPROCESSING


def eval_crops(images: torch.Tensor, aspect: torch.Tensor, image_size: int, crop_fraction: float,
               cropped: torch.Tensor | None = None) -> torch.Tensor:
    """The evaluation transform of a batch: canvases (B, 3, H, W) (uint8 or float in [0, 1]) and
    original aspect ratios (B,) -> centred square crops (B, 3, image_size, image_size), normalised.

    Items whose ``cropped`` (the item field of :class:`udi.data.crops.CenterCropViews`) is true are
    that crop already (cut from the full-resolution file): only normalised."""
    if cropped is not None and bool(torch.as_tensor(cropped).any()):
        if not bool(torch.as_tensor(cropped).all()):
            raise ValueError("a batch mixes centre crops and whole images")
        if tuple(images.shape[-2:]) != (image_size, image_size):
            raise ValueError(f"the items are centre crops of {tuple(images.shape[-2:])} pixels, not {image_size}: "
                             "make the data set at the evaluation image size")
        return normalize(to_float(images))
    boxes = center_box(aspect.to(images.device), crop_fraction)
    return normalize(crop_resize(images, boxes, image_size))


def with_eval_crops(dataset: Dataset, image_size: int, crop_fraction: float) -> Dataset:
    """``dataset`` whose folder images come as their evaluation centre crop, cut from the
    full-resolution file (:class:`udi.data.crops.CenterCropViews`); other data sets unchanged."""
    from udi.data.crops import CenterCropViews

    return _with_folder_views(dataset, lambda folder: CenterCropViews(image_size, crop_fraction,
                                                                      folder.max_image_pixels))


def on_canvas(dataset: Dataset) -> Dataset:
    """``dataset`` whose folder images come whole, on their canvas (what random crops need: the
    augmented linear probe), instead of as an evaluation centre crop."""
    return _with_folder_views(dataset, lambda folder: None)


def _with_folder_views(dataset: Dataset, make_views) -> Dataset:
    """A copy of the image folder under ``dataset`` (through ``Subset``s) whose ``views`` is
    ``make_views(folder)``; ``dataset`` itself when nothing changes (another data set, or the same views:
    None stays None)."""
    from udi.data.datasets import ImageFolderDataset

    if isinstance(dataset, Subset):
        inner = _with_folder_views(dataset.dataset, make_views)
        return dataset if inner is dataset.dataset else Subset(inner, dataset.indices)
    if isinstance(dataset, ImageFolderDataset):
        views = make_views(dataset)
        if views is None and dataset.views is None:
            return dataset
        dataset = copy.copy(dataset)
        dataset.views = views
    return dataset


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


def parse_feature(kind: str) -> str:
    """Validate a feature name: one of ``FEATURES`` or ``lastN`` (N >= 1)."""
    if kind in FEATURES or (kind.startswith("last") and kind[4:].isdigit() and int(kind[4:]) >= 1):
        return kind
    raise ValueError(f"unknown feature '{kind}' (choose from {', '.join(FEATURES)}, lastN)")


def _collate_targets(batch: dict, targets: dict[str, list]) -> None:
    for key in TARGET_KEYS:
        if key in batch:
            targets.setdefault(key, []).append(torch.as_tensor(batch[key]))


@torch.no_grad()
def extract_bank(
    backbone: VisionTransformer,
    dataset: Dataset,
    features: Sequence[str] = ("cls",),
    blocks: bool = False,
    tokens: Sequence[str] = (),
    image_size: int = 224,
    crop_fraction: float = 0.875,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    description: str = "features",
    token_rows: Sequence[int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One pass of the frozen backbone over ``dataset``.

    Returns ``(bank, targets)``:
    - bank[kind] (n, dim) float32 for each of ``features`` (see ``select_features``; ``lastN``:
      the normed [cls] of the last N blocks concatenated, DINO's linear feature);
    - with ``blocks``: bank["block{i}_cls"], bank["block{i}_patch_mean"] (n, D), normed, every block;
    - bank["tokens"] (n, N, D) float16 patch tokens after the final norm, and/or
      bank["tokens_prenorm"] (n, N, D) float16 of the last block before it, if asked in ``tokens``;
      (they are large: with ``token_rows``, only for the items at those positions, in increasing
      order, and bank["token_rows"] (n_tok,) int64 says which rows of the other entries they are);
    - targets: every key of ``TARGET_KEYS`` the items carry, stacked (``label`` always).
    """
    for kind in features:
        parse_feature(kind)
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    n_cls, depth = backbone.n_cls, backbone.depth
    bank: dict[str, list[torch.Tensor]] = {}
    targets: dict[str, list[torch.Tensor]] = {}

    seen = 0
    keep = None if token_rows is None else torch.zeros(len(dataset), dtype=torch.bool)
    if keep is not None:
        keep[torch.as_tensor(list(token_rows), dtype=torch.long)] = True

    def add(name: str, value: torch.Tensor, dtype=torch.float32) -> None:
        bank.setdefault(name, []).append(value.to("cpu", dtype))

    def add_tokens(name: str, value: torch.Tensor) -> None:
        if keep is not None:
            value = value[keep[seen:seen + len(value)].to(value.device)]
        add(name, value, torch.float16)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            images = batch["image"].to(device)
            crops = eval_crops(images, batch["aspect"], image_size, crop_fraction, batch.get("cropped"))
            hidden = backbone.forward_intermediates(crops, range(depth))  # pre-norm, every block
            final = backbone.norm(hidden[-1])
            for kind in features:
                if kind.startswith("last"):
                    last = hidden[-int(kind[4:]):]
                    add(kind, torch.cat([backbone.norm(h[:, 0]) for h in last], dim=1))
                else:
                    add(kind, select_features(final, n_cls, kind))
            if blocks:
                for i, h in enumerate(hidden):
                    normed = backbone.norm(h)
                    add(f"block{i}_cls", normed[:, 0])
                    add(f"block{i}_patch_mean", normed[:, n_cls:].mean(dim=1))
            if "tokens" in tokens:
                add_tokens("tokens", final[:, n_cls:])
            if "tokens_prenorm" in tokens:
                add_tokens("tokens_prenorm", hidden[-1][:, n_cls:])
            _collate_targets(batch, targets)
            seen += len(images)
            bar.advance(task, len(images))
    out = {k: torch.cat(v) for k, v in bank.items()}
    if keep is not None and tokens:
        out["token_rows"] = torch.nonzero(keep).flatten()
    return out, {k: torch.cat(v) for k, v in targets.items()}


@torch.no_grad()
def extract_pixel_bank(
    dataset: Dataset,
    center: bool,
    image_size: int,
    crop_fraction: float,
    batch_size: int = 256,
    progress: bool = True,
    description: str = "pixels",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The raw-pixel baseline's bank: ``bank["pixels"]`` (n, 3 * image_size**2) float32, the
    evaluation crops of ``eval_crops`` flattened, each row minus its mean if ``center``;
    targets as in ``extract_bank``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    rows: list[torch.Tensor] = []
    targets: dict[str, list[torch.Tensor]] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in loader:
            pixels = eval_crops(batch["image"], batch["aspect"], image_size, crop_fraction,
                                batch.get("cropped")).flatten(1).float()
            rows.append(pixels - pixels.mean(dim=1, keepdim=True) if center else pixels)
            _collate_targets(batch, targets)
            bar.advance(task, len(pixels))
    return {"pixels": torch.cat(rows)}, {k: torch.cat(v) for k, v in targets.items()}
