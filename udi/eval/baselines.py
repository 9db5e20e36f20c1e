"""Reference rows for an evaluation, measured with the same protocols and preprocessing.

- ``raw pixels``: the evaluation crop itself (the image the backbone would see, resized and
  normalised), flattened to 3 * S * S values; ``raw pixels (mean removed)``: the same with
  each image's mean value subtracted (cosine k-NN then compares correlations). The same
  vector stands in for every feature column ([cls], [cls+], patch_mean, lastN), so that each
  column has its baseline; protocols that need a network (selagg, layers, dense,
  attnstats) are not run for them, and the linear probe runs on cached features.
- ``random init``: the same architecture at its initial weights (a run's own step-0 weights
  where its config is known: same seed, same construction as ``udi pretrain``).
- chance: the accuracy of always predicting the most frequent train class of a task, and
  for the presence probes the mean positive rate (the average precision of a constant score).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from udi.config import load_config
from udi.methods import build_network
from udi.models.vit import VisionTransformer, vit_from_config

RAW_PIXELS = "raw pixels"
RAW_PIXELS_CENTERED = "raw pixels (mean removed)"
RANDOM_INIT = "random init"
CHANCE = "chance"
PIXEL_PROTOCOLS = ("knn", "linear", "lowshot", "richness")
PIXEL_NOTE = ("raw pixels rows: the flattened evaluation image, the same vector in every feature column; "
              "selagg, layers, dense and attnstats need a network and are not run for them")


def pixel_note(pixels: RawPixels, protocols: list[str]) -> str:
    """``PIXEL_NOTE``, naming the protocols of this run (``protocols``) that the pixel rows
    could run but were told not to (``RawPixels.protocols``)."""
    skipped = [p for p in protocols if p in PIXEL_PROTOCOLS and p not in pixels.protocols]
    return PIXEL_NOTE + (f"; {', '.join(skipped)} not run for them here (slow on pixels)" if skipped else "")


class RawPixels:
    """Stands in for a backbone in ``udi.eval.suite.run_suite``: its features are the pixels.

    It copies the image size and the attributes that choose default features (class tokens,
    depth, pretraining method) from ``like``, so that its columns are the compared backbone's.
    ``protocols``: those of ``PIXEL_PROTOCOLS`` to run (the probes on 3 * S * S dimensions are
    the slow ones: richness on 10,000 scenes images takes minutes).
    """

    def __init__(self, like: VisionTransformer, center: bool, protocols: tuple[str, ...] = PIXEL_PROTOCOLS):
        unknown = set(protocols) - set(PIXEL_PROTOCOLS)
        if unknown:
            raise ValueError(f"raw pixels cannot run {sorted(unknown)} (only {', '.join(PIXEL_PROTOCOLS)})")
        self.center = center
        self.protocols = tuple(protocols)
        self.img_size = like.img_size
        self.n_cls = like.n_cls
        self.depth = like.depth
        self.pretrain_method = getattr(like, "pretrain_method", None)

    @property
    def identity(self) -> str:
        """The feature cache's key (there are no weights to hash)."""
        return f"raw-pixels:center={self.center}:size={self.img_size}"


def pixel_baselines(like: VisionTransformer, protocols: tuple[str, ...] = PIXEL_PROTOCOLS) -> dict[str, RawPixels]:
    """The two raw-pixel rows (as is, and with each image's mean removed)."""
    return {RAW_PIXELS: RawPixels(like, False, protocols), RAW_PIXELS_CENTERED: RawPixels(like, True, protocols)}


def run_config(weights: str | Path) -> dict | None:
    """The resolved config of the run that ``weights`` come from (its directory's
    ``config.yaml``), or None when there is none (published weights, a lone file)."""
    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    config = folder / "config.yaml"
    return load_config(config) if config.is_file() else None


def random_init(like: VisionTransformer, cfg: dict | None = None, seed: int = 0) -> VisionTransformer:
    """``like``'s architecture at initial weights, in eval mode: with the run config ``cfg``
    the run's own step-0 backbone (seeded with ``train.seed``, built as the Trainer builds
    it), else a fresh ``VisionTransformer`` of the same architecture seeded with ``seed``."""
    state = torch.random.get_rng_state()  # leave the caller's global RNG as it was
    try:
        if cfg is not None:
            torch.manual_seed(cfg["train"]["seed"])
            model = build_network(cfg).backbone
        else:
            torch.manual_seed(seed)
            model = vit_from_config(copy.deepcopy(like.arch_config()))
    finally:
        torch.random.set_rng_state(state)
    model.pretrain_method = getattr(like, "pretrain_method", None)  # the same default features
    return model.eval()


def _majority_rate(train: torch.Tensor, val: torch.Tensor) -> float:
    values, counts = np.unique(train.numpy(), return_counts=True)
    return 100.0 * float((val.numpy() == values[counts.argmax()]).mean())


def chance_levels(train_targets: dict[str, torch.Tensor], val_targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Chance level (%) of each task the targets allow: ``label``, and on ``scenes`` ``present``
    (mean over classes with a positive val image of the val positive rate), ``color``,
    ``position``, ``count``, ``background`` (majority train class, scored on val)."""
    levels = {"label": _majority_rate(train_targets["label"], val_targets["label"])}
    for name in ("color", "position", "count", "background"):
        if name in train_targets and name in val_targets:
            levels[name] = _majority_rate(train_targets[name], val_targets[name])
    if "present" in val_targets:
        rates = val_targets["present"].float().mean(0)
        levels["present"] = 100.0 * float(rates[rates > 0].mean())
    return levels


def chance_row(levels: dict[str, float], columns: list[str]) -> dict[str, float]:
    """The chance level under each column of a ``summarize`` row that has one (label
    accuracies of knn, linear, low-shot, selagg, layers; the richness probes)."""
    row = {}
    for column in columns:
        head = column.split(" [")[0]
        if head.startswith(("knn ", "linear", "selagg", "best layer knn")) or head.endswith(" shot"):
            row[column] = levels["label"]
        elif head == "present_map" and "present" in levels:
            row[column] = levels["present"]
        elif head.endswith("_acc") and head[:-4] in levels:
            row[column] = levels[head[:-4]]
    return row


def verdicts(rows: dict[str, dict[str, float]], model: str) -> list[str]:
    """One plain sentence per column of ``rows[model]`` that some reference row also has:
    the model's value against each reference (random init, raw pixels, chance), with the
    signed margin, so that what beats what is stated, never implied."""
    references = [name for name in (RANDOM_INIT, RAW_PIXELS, RAW_PIXELS_CENTERED, CHANCE) if name in rows]
    lines = []
    for column, value in rows[model].items():
        parts = []
        for name in references:
            other = rows[name].get(column)
            if other is not None:
                margin = value - other
                parts.append(f"{'above' if margin > 0 else 'below' if margin < 0 else 'equal to'} {name} "
                             f"({other:.2f}){f' by {abs(margin):.2f}' if margin else ''}")
        if parts:
            lines.append(f"{column}: {value:.2f}, " + ", ".join(parts))
    return lines
