"""Online monitoring: a cheap k-NN of the teacher backbone during training (``train.eval_every``).

Every ``train.eval_every`` steps (and at the last step) the main process extracts features of
a fixed labelled subset with the evaluation transform of ``udi eval`` and logs the weighted
k-NN top-1 accuracy (k = 20, T = 0.07, as the suite) on the val subset as ``knn_<feature>``
keys of ``log.jsonl`` (``knn_cls``, ``knn_cls_plus`` where there is a second class token,
``knn_patch_mean``), so that learning, or its absence, shows while the run goes on.

Data: ``train.eval_data`` (a built-in name, or a folder with ``train/`` and ``val/`` class
subfolders), else the run's built-in ``data.name``. ``train.eval_images`` images of each split,
a fixed class-stratified random subset (seed 0, ``udi.eval.subsets``), the same at every
evaluation and on resume.
"""

from __future__ import annotations

import torch

from udi.config import ConfigError
from udi.eval.features import eval_crop_fraction, extract_bank
from udi.eval.knn import knn_accuracy
from udi.eval.subsets import stratified_subset
from udi.eval.suite import labelled_splits
from udi.models.vit import VisionTransformer

K = 20
TEMPERATURE = 0.07


def monitor_source(cfg: dict) -> str:
    """The labelled data of the online k-NN: ``train.eval_data``, else the built-in ``data.name``."""
    source = cfg["train"]["eval_data"] or cfg["data"]["name"]
    if source is None:
        raise ConfigError(
            "'train.eval_every' needs labelled data: set 'train.eval_data' to a folder with train/ and val/ "
            "class subfolders (or a built-in data set: scenes, mnist5k, digits)"
        )
    return source


class KnnMonitor:
    """``monitor(backbone) -> {"knn_cls": %, ...}`` on the fixed subsets of ``cfg``'s eval data."""

    def __init__(self, cfg: dict, device: torch.device):
        self.source = monitor_source(cfg)
        try:
            # Folders: the evaluation centre crop from the full-resolution file, as `udi eval` takes it.
            train_set, val_set = labelled_splits(self.source, scenes_size=cfg["data"]["scenes_size"],
                                                 eval_size=cfg["views"]["global_size"])
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"'train.eval_data': {error}") from None
        size = cfg["train"]["eval_images"]
        self.train_set, self.val_set = stratified_subset(train_set, size), stratified_subset(val_set, size)
        self.crop_fraction = eval_crop_fraction(self.source)
        self.device = device

    @staticmethod
    def features(backbone: VisionTransformer) -> list[str]:
        return ["cls"] + (["cls+"] if backbone.n_cls >= 2 else []) + ["patch_mean"]

    @torch.no_grad()
    def __call__(self, backbone: VisionTransformer) -> dict[str, float]:
        features = self.features(backbone)
        was_training = backbone.training
        banks = [
            extract_bank(backbone, split, features, image_size=backbone.img_size, crop_fraction=self.crop_fraction,
                         device=self.device, progress=False)
            for split in (self.train_set, self.val_set)
        ]
        backbone.train(was_training)
        (train, train_t), (val, val_t) = banks
        key = f"knn_top1_k{min(K, len(self.train_set))}"
        return {
            f"knn_{name.replace('+', '_plus')}": knn_accuracy(
                train[name], train_t["label"], val[name], val_t["label"], (K,), TEMPERATURE
            )[key]
            for name in features
        }
