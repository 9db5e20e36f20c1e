"""Linear probe on a frozen backbone, DINO protocol (docs/methods.md section 6).

A single ``nn.Linear`` (weights N(0, 0.01), zero bias) trained with cross-entropy, SGD
with momentum 0.9, a cosine learning-rate schedule over all steps and no weight decay
by default. The validation top-1 is measured after every epoch; the best and the final
values are reported.

Two entry points:

* :func:`train_linear_on_features`: cached features, no augmentation (fast).
* :func:`train_linear_augmented`: the full protocol, where every epoch recomputes the
  training features from a random-resized crop + horizontal flip of each image.

All randomness (initialisation, shuffling, crops, flips) is seeded by ``cfg.seed``
and does not touch the global RNG.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from udi.data.augment import crop_resize, normalize as imagenet_normalize
from udi.data.views import sample_crop_boxes
from udi.models.vit import VisionTransformer

MOMENTUM = 0.9


@dataclass
class LinearConfig:
    """Linear-probe settings (defaults: DINO's ImageNet recipe)."""

    epochs: int = 100
    lr: float = 0.001  # for a batch of 256; scaled linearly with batch_size
    batch_size: int = 256
    weight_decay: float = 0.0
    seed: int = 0


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. module construction) under ``torch.manual_seed(seed)``, restoring the global CPU RNG after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def linear_head(dim: int, num_classes: int) -> nn.Linear:
    """``nn.Linear(dim, num_classes)`` with weights N(0, 0.01) and zero bias (DINO's init)."""
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def cosine_sgd(
    params, lr: float, batch_size: int, weight_decay: float, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD (momentum 0.9) at ``lr * batch_size / 256`` decaying to 0 along a cosine over
    ``total_steps`` optimiser steps (call ``scheduler.step()`` after every step)."""
    opt = torch.optim.SGD(params, lr=lr * batch_size / 256, momentum=MOMENTUM, weight_decay=weight_decay)
    steps = max(total_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    return opt, sched


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A random permutation of ``range(n)`` cut into batches of CPU indices.

    A trailing batch of a single sample joins the previous one: BatchNorm cannot train
    on one sample, and one-sample steps are noisy anyway. The batch count is the same
    every epoch, so the cosine schedule's length is known in advance.
    """
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def num_batches(n: int, batch_size: int) -> int:
    """Length of :func:`epoch_batches`' list."""
    count = math.ceil(n / batch_size)
    return count - 1 if count > 1 and n % batch_size == 1 else count


@torch.no_grad()
def top1(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch_size: int, device) -> float:
    """Top-1 accuracy (%) of ``model`` (inputs (b, ...) on ``device`` -> logits (b, C)) on x (M, ...), y (M,)."""
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device).float()
        correct += (model(xb).argmax(dim=1).cpu() == y[start : start + batch_size].cpu()).sum().item()
    return 100.0 * correct / max(len(x), 1)


def sgd_step(loss: Tensor, opt: torch.optim.Optimizer, sched) -> None:
    """One optimiser step, the schedule stepped with it."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def end_of_epoch(classify, val_x: Tensor, val_y: Tensor, cfg: LinearConfig, device, best: float, bar, task):
    """Val top-1 after an epoch: returns (best so far, this epoch's) and updates the progress bar."""
    final = top1(classify, val_x, val_y, max(cfg.batch_size, 1024), device)
    best = max(best, final)
    bar.update(task, advance=1, description=f"linear probe: val top-1 {final:.1f}% (best {best:.1f}%)")
    return best, final


def train_linear_on_features(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    cfg: LinearConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    normalize: bool = True,
) -> dict[str, float]:
    """Linear probe on cached features (no augmentation).

    With ``normalize`` (default) every feature dimension is standardised with the mean and
    standard deviation of the *training* features, applied to both splits. DINO's linear
    eval does not standardise (its features are already LayerNorm'd), but on small data
    sets with few SGD steps standardising makes the small DINO learning rate work; pass
    ``normalize=False`` for the plain protocol. Standardisation is a fixed affine map of
    the features, so the classifier stays linear in them.

    Args:
        train_x: (N, D) training features (any float dtype, any device; moved per batch).
        train_y: (N,) int64 labels in ``[0, num_classes)``.
        val_x: (M, D) validation features.
        val_y: (M,) int64 labels.
        num_classes: number of classes C.
        cfg: optimisation settings.
        device: where the classifier trains.
        progress: show a rich progress bar over epochs.
        normalize: standardise features with the training statistics.

    Returns:
        ``{"linear_top1_best": %, "linear_top1_final": %}``, best over the per-epoch evaluations
        and the value after the last epoch.
    """
    n, dim = train_x.shape
    if normalize:
        std, mean = torch.std_mean(train_x.float(), dim=0)
        mean, std = mean.to(device), std.clamp(min=1e-6).to(device)  # constant dimensions stay finite
    else:
        mean, std = torch.zeros(dim, device=device), torch.ones(dim, device=device)

    with seeded(cfg.seed):
        head = linear_head(dim, num_classes).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    opt, sched = cosine_sgd(
        head.parameters(), cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.epochs * num_batches(n, cfg.batch_size)
    )

    def classify(x: Tensor) -> Tensor:
        return head((x - mean) / std)

    best = final = 0.0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("linear probe", total=cfg.epochs)
        for _ in range(cfg.epochs):
            for idx in epoch_batches(n, cfg.batch_size, generator):
                idx = idx.to(train_x.device)
                loss = F.cross_entropy(classify(train_x[idx].to(device).float()), train_y[idx].to(device))
                sgd_step(loss, opt, sched)
            best, final = end_of_epoch(classify, val_x, val_y, cfg, device, best, bar, task)
    return {"linear_top1_best": best, "linear_top1_final": final}


def random_crop_flip_boxes(
    aspect: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> Tensor:
    """Training boxes of the linear probe: one random-resized crop per image, flipped with
    probability ``flip_p`` (x0 and x1 swapped).

    Args:
        aspect: (B,) original width / height.
        generator: CPU generator.

    Returns:
        (B, 4) normalised boxes on ``aspect``'s device.
    """
    boxes = sample_crop_boxes(aspect, 1, scale, ratio, generator)[:, 0]
    flip = (torch.rand(len(boxes), generator=generator) < flip_p).to(boxes.device)
    return torch.where(flip[:, None], boxes[:, [2, 1, 0, 3]], boxes)


def train_linear_augmented(
    backbone: VisionTransformer,
    feature_fn: Callable[[Tensor | list[Tensor]], Tensor],
    train_set: Dataset,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    cfg: LinearConfig,
    image_size: int,
    crop_fraction_scale: tuple[float, float] = (0.08, 1.0),
    device: torch.device | str = "cpu",
    progress: bool = True,
    intermediate_blocks: Sequence[int] | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """Linear probe with DINO's training augmentation; features are recomputed every epoch.

    Each epoch, every training image gets a random-resized-crop box (area ``crop_fraction_scale``,
    ratio 3/4..4/3) and a horizontal flip (p = 0.5), is cropped and resized to
    ``image_size``, ImageNet-normalised and passed through the frozen backbone (eval mode,
    no gradients); ``feature_fn`` turns the tokens into features and the linear classifier
    takes one SGD step per batch. Features are not standardised (DINO's protocol; they
    change every epoch, so there are no fixed statistics to use).

    Args:
        backbone: frozen ViT; put in eval mode during training, its previous mode restored after.
        feature_fn: tokens -> (B, F) features. It receives ``backbone.forward_features(crops)``,
            (B, n_cls + N, D) after the final norm, or, when ``intermediate_blocks`` is given,
            ``backbone.forward_intermediates(crops, intermediate_blocks, norm=True)``, a list
            of such tensors (e.g. DINO's concatenated [cls] of the last 4 blocks).
        train_set: items ``{"image": uint8 (3, H, W), "aspect": float, "label": int}`` with
            one canvas size H x W for the whole set.
        val_x: (M, F) validation features, computed once by the caller with the centre crop
            and the same ``feature_fn``.
        val_y: (M,) int64 labels.
        num_classes: number of classes C.
        cfg: optimisation settings.
        image_size: side of the training crops.
        crop_fraction_scale: area range of the random-resized crop.
        device: where the backbone and the classifier run.
        progress: show a rich progress bar over epochs.
        intermediate_blocks: block indices for ``forward_intermediates`` (None: final output).
        num_workers: DataLoader workers reading ``train_set``.

    Returns:
        ``{"linear_top1_best": %, "linear_top1_final": %}``.
    """
    was_training = backbone.training
    backbone.to(device).eval()
    n = len(train_set)
    generator = torch.Generator().manual_seed(cfg.seed)
    with seeded(cfg.seed):
        head = linear_head(val_x.shape[1], num_classes).to(device)
    opt, sched = cosine_sgd(
        head.parameters(), cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.epochs * num_batches(n, cfg.batch_size)
    )

    @torch.no_grad()
    def features(images: Tensor, aspect: Tensor) -> Tensor:
        boxes = random_crop_flip_boxes(aspect, generator, crop_fraction_scale)
        crops = imagenet_normalize(crop_resize(images.to(device), boxes.to(device), image_size))
        if intermediate_blocks is None:
            tokens = backbone.forward_features(crops)
        else:
            tokens = backbone.forward_intermediates(crops, intermediate_blocks, norm=True)
        return feature_fn(tokens).float()

    best = final = 0.0
    try:
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("linear probe (augmented)", total=cfg.epochs)
            for _ in range(cfg.epochs):
                # The sampler yields this epoch's batches of indices, so the order comes from `generator`.
                order = [idx.tolist() for idx in epoch_batches(n, cfg.batch_size, generator)]
                loader = DataLoader(train_set, batch_sampler=order, num_workers=num_workers)
                for batch in loader:
                    x = features(batch["image"], torch.as_tensor(batch["aspect"], dtype=torch.float32))
                    loss = F.cross_entropy(head(x), torch.as_tensor(batch["label"]).to(device))
                    sgd_step(loss, opt, sched)
                best, final = end_of_epoch(head, val_x, val_y, cfg, device, best, bar, task)
    finally:
        backbone.train(was_training)
    return {"linear_top1_best": best, "linear_top1_final": final}
