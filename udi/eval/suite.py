"""The evaluation suite: every protocol of docs/methods.md section 6 on one frozen backbone.

Features are extracted once per split (one pass computes everything the chosen protocols
need) and cached in the output directory. Results are nested by protocol and feature:
``{"knn": {"cls": {"knn_top1_k20": 71.2, ...}}, "linear": {"last4": {...}}, ...}``;
``summarize`` flattens them into one row of a comparison table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from sklearn.exceptions import ConvergenceWarning

from udi.config import did_you_mean
from udi.data.datasets import BUILTIN_DATASETS, ImageFolderDataset, build_dataset, folder_classes
from udi.eval.baselines import CHANCE, RawPixels, chance_levels, chance_row
from udi.eval.features import (EVAL_CANVAS_SIZE, FEATURES, eval_crop_fraction, eval_preprocessing, extract_bank,
                               extract_pixel_bank, parse_feature, with_eval_crops)
from udi.eval.subsets import dataset_labels, stratified_indices, stratified_subset
from udi.io.checkpoint import atomic_write
from udi.models.vit import VisionTransformer

# In the order they run: the fast ones first, so that an interrupted evaluation has kept them
# (``metrics.json`` is rewritten after each protocol).
PROTOCOLS = ("knn", "lowshot", "layers", "richness", "dense", "attnstats", "selagg", "linear")
# Above this many train images the linear probe defaults to cached features (one pass over the
# data instead of one per epoch); ``SuiteOptions.linear_augment=True`` asks for the augmented one.
LINEAR_AUGMENT_MAX_TRAIN = 10_000
SCENES_ONLY = ("dense", "richness")  # need the masks and attribute targets of `scenes`
FEATURE_PROTOCOLS = ("knn", "linear", "lowshot", "richness")  # the ones --features applies to


@dataclass
class SuiteOptions:
    image_size: int | None = None  # None: the backbone's training size
    batch_size: int = 256
    knn_k: tuple[int, ...] = (10, 20, 100, 200)
    knn_temperature: float = 0.07
    linear_epochs: int = 100
    # True: recompute features per epoch with the protocol's augmentation; False: cached features;
    # None: augmented up to LINEAR_AUGMENT_MAX_TRAIN train images, cached above.
    linear_augment: bool | None = None
    selagg_epochs: int = 50
    dense_epochs: int = 20
    lowshot_repeats: int = 3
    max_token_images: int = 20_000  # train images whose patch tokens are kept (selagg, dense)
    attn_images: int = 512
    seed: int = 0
    progress: bool = True
    max_images: int | None = None  # use N images of each split, class-stratified (quick looks, tests)


def labelled_splits(data: str, canvas_size: int = EVAL_CANVAS_SIZE, scenes_size: int = 32, seed: int = 0,
                    eval_size: int | None = None):
    """(train, val) data sets of a built-in name or of a folder with train/ and val/ subfolders.

    ``eval_size``: a folder's items are their evaluation centre crop at this size, cut from the
    full-resolution file (``udi.eval.features.with_eval_crops``; what ``run_suite`` uses); None:
    the whole image on the ``canvas_size`` canvas."""
    if data in BUILTIN_DATASETS:
        kwargs = {"name": data, "scenes_size": scenes_size, "seed": seed}
    else:
        root = Path(data)
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise FileNotFoundError(
                f"evaluation data '{data}' is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
                f"nor a folder with train/ and val/ subfolders{'' if root.exists() else did_you_mean(data, BUILTIN_DATASETS)}"
            )
        splits = labelled_folder_splits(root, canvas_size)
        if eval_size is None:
            return splits
        fraction = eval_crop_fraction(data)
        return tuple(with_eval_crops(s, eval_size, fraction) for s in splits)
    return build_dataset(split="train", **kwargs), build_dataset(split="val", **kwargs)


def labelled_folder_splits(root: Path, canvas_size: int) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """``root/train`` and ``root/val`` with one class list for both: the union of their class
    folders by name, so that a label means the same class in both splits. A val class that
    train lacks keeps its own label, which no train image has: its images count as errors."""
    splits = {name: root / name for name in ("train", "val")}
    found = {name: folder_classes(folder) for name, folder in splits.items()}
    for name, folder in splits.items():
        if not found[name]:
            raise ValueError(f"{folder} has no class subfolders: evaluation needs labelled images "
                             f"({folder}/<class>/<image>)")
    train_classes, val_classes = found["train"], found["val"]
    classes = sorted(set(train_classes) | set(val_classes))
    unseen = sorted(set(val_classes) - set(train_classes))
    if unseen:
        warnings.warn(f"{splits['val']}: class(es) {', '.join(unseen)} have no train images in {splits['train']}; "
                      "their val images count as errors")
    train_set, val_set = (ImageFolderDataset(folder, canvas_size, classes=classes) for folder in splits.values())
    for dataset in (train_set, val_set):
        if not dataset.classes:  # images outside <class>/ folders: an unlabeled layout
            raise ValueError(f"{dataset.root} is not one folder per class ({dataset.root}/<class>/<image>): "
                             "evaluation needs labelled images")
    return train_set, val_set


def supported_protocols(data: str) -> list[str]:
    return [p for p in PROTOCOLS if p not in SCENES_ONLY or data == "scenes"]


def check_protocols(data: str, protocols: list[str] | None) -> list[str]:
    """The protocols to run (default: all that ``data`` supports), in the order of ``PROTOCOLS``
    (fast ones first) whatever the order asked; a clear error otherwise."""
    supported = supported_protocols(data)
    protocols = protocols or supported
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)} (choose from {', '.join(PROTOCOLS)})")
    unsupported = [p for p in protocols if p not in supported]
    if unsupported:
        raise ValueError(f"protocol(s) {', '.join(unsupported)} need the masks and targets of 'scenes', not '{data}'")
    return [p for p in PROTOCOLS if p in protocols]


def default_features(protocol: str, backbone: VisionTransformer) -> list[str]:
    """The papers' choice per protocol ([cls] for k-NN and low-shot, DINO's concatenated
    [cls] of the last 4 blocks for the linear probe, every feature for richness). A Bootleg
    backbone trains no [cls] objective: its natural feature is the mean patch token."""
    if protocol == "richness":
        return [f for f in FEATURES if backbone.n_cls >= 2 or f in ("cls", "patch_mean")]
    if getattr(backbone, "pretrain_method", None) == "bootleg":
        return ["patch_mean"]
    if protocol == "linear":
        return [f"last{min(4, backbone.depth)}"]
    return ["cls"]


def fingerprint(backbone: VisionTransformer | RawPixels) -> str:
    """Hash of the weights (the feature cache's key: a cache never outlives the weights it came from)."""
    if isinstance(backbone, RawPixels):
        return backbone.identity
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Feature banks of the train and val splits, computed once, saved in ``out_dir``."""

    def __init__(self, backbone, data, train_set, val_set, plan: dict, options: SuiteOptions, device, out_dir):
        self.backbone, self.data, self.options, self.device = backbone, data, options, device
        self.sets = {"train": train_set, "val": val_set}
        self.plan = plan
        self.out_dir = Path(out_dir) if out_dir else None
        self.ident = fingerprint(backbone) if out_dir else ""
        self.banks: dict[str, tuple[dict, dict]] = {}

    def _key(self, split: str) -> str:
        fields = {"weights": self.ident, "data": self.data, "split": split, **self.plan,
                  "max_images": self.options.max_images,
                  "image_size": self.image_size, "crop_fraction": self.crop_fraction,
                  "preprocessing": eval_preprocessing(self.data),
                  "max_token_images": self.options.max_token_images}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def image_size(self) -> int:
        return self.options.image_size or self.backbone.img_size

    @property
    def crop_fraction(self) -> float:
        return eval_crop_fraction(self.data)

    def get(self, split: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if split in self.banks:
            return self.banks[split]
        key = self._key(split)
        path = self.out_dir / f"features_{split}.pt" if self.out_dir else None
        if path is not None and path.exists():
            try:
                cached = torch.load(path, weights_only=True)
            except Exception as error:  # torn or foreign: recompute (and replace it) rather than fail
                warnings.warn(f"feature cache {path} cannot be read ({type(error).__name__}): recomputing it")
                cached = {}
            if isinstance(cached, dict) and cached.get("key") == key:
                self.banks[split] = (cached["bank"], cached["targets"])
                return self.banks[split]
        bank, targets = self._extract(split)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"key": key, "bank": bank, "targets": targets}
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
        self.banks[split] = (bank, targets)
        return self.banks[split]

    def _extract(self, split: str) -> tuple[dict, dict]:
        """One pass over ``split``: the backbone's features, or the pixels of a raw-pixel baseline."""
        if isinstance(self.backbone, RawPixels):
            return extract_pixel_bank(
                self.sets[split], self.backbone.center, self.image_size, self.crop_fraction,
                batch_size=self.options.batch_size, progress=self.options.progress, description=f"{split} pixels",
            )
        return extract_bank(
            self.backbone, self.sets[split], features=self.plan["features"], blocks=self.plan["blocks"],
            tokens=self.plan["tokens"], image_size=self.image_size, crop_fraction=self.crop_fraction,
            batch_size=self.options.batch_size, device=self.device, progress=self.options.progress,
            description=f"{split} features",
            token_rows=self._token_rows() if split == "train" else None,
        )

    def _token_rows(self) -> list[int] | None:
        """Train items whose patch tokens are kept: ``max_token_images`` of them, class-stratified."""
        train, cap = self.sets["train"], self.options.max_token_images
        if not self.plan["tokens"] or cap is None or cap >= len(train):
            return None
        return stratified_indices(dataset_labels(train), cap, self.options.seed).tolist()


def _plan(protocols: list[str], features: dict[str, list[str]]) -> dict:
    wanted = sorted({f for p in protocols for f in features.get(p, [])} | {"cls"})
    tokens = (["tokens"] if "dense" in protocols else []) + (["tokens_prenorm"] if "selagg" in protocols else [])
    return {"features": wanted, "blocks": "layers" in protocols, "tokens": tokens}


def run_suite(
    backbone: VisionTransformer | RawPixels,
    data: str,
    protocols: list[str] | None = None,
    features: list[str] | dict[str, list[str]] | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    options: SuiteOptions | None = None,
    weights: str | Path | None = None,
    on_protocol: Callable[[dict], None] | None = None,
) -> dict:
    """Run ``protocols`` (default: all that ``data`` supports, fast ones first: ``PROTOCOLS``)
    and return the nested results, with ``results["seconds"]`` the time each protocol took
    (feature extraction included), ``results["images"]`` the train and val images it used
    (``{"knn": {"train": n, "val": m}}``) and ``results["source"]`` what they were measured on
    (``provenance``: the ``weights`` path and step, method, architecture, data, sizes, options,
    udi version, date). ``on_protocol(results)`` is called after each protocol with the results
    so far (``udi eval`` rewrites ``metrics.json`` there, so an interrupted run keeps them).

    ``features`` replaces the default feature choice of knn, linear, lowshot and richness: a
    list for all four, or a dict protocol -> list for some of them (the others keep theirs).
    ``results["chance"]`` holds the chance level of each task (``udi.eval.baselines.chance_levels``)
    when some protocol used the feature banks.

    A :class:`udi.eval.baselines.RawPixels` backbone runs only its ``protocols`` (feature
    protocols; the linear probe on cached features), once on the pixels, reported under every
    feature name a backbone would have.
    """
    options = options or SuiteOptions()
    protocols = check_protocols(data, protocols)
    if isinstance(features, dict):
        unknown = set(features) - set(FEATURE_PROTOCOLS)
        if unknown:
            raise ValueError(f"features given for {sorted(unknown)}; only {', '.join(FEATURE_PROTOCOLS)} take features")
        per_protocol = features
    else:
        per_protocol = {p: features for p in FEATURE_PROTOCOLS} if features else {}
    chosen = {p: [parse_feature(f) for f in per_protocol[p]] if per_protocol.get(p) else default_features(p, backbone)
              for p in FEATURE_PROTOCOLS}
    for p in ("cls+", "cls_cat"):
        if backbone.n_cls < 2 and any(p in v for v in chosen.values()):
            raise ValueError(f"feature '{p}' needs a second class token; this backbone has one")
    pixels = isinstance(backbone, RawPixels)
    if pixels:
        protocols = [p for p in protocols if p in backbone.protocols]
        options = dataclasses.replace(options, linear_augment=False)  # no network to augment through
    train_set, val_set = labelled_splits(data, eval_size=options.image_size or backbone.img_size)
    full_sizes = {"train": len(train_set), "val": len(val_set)}
    train_set, val_set = (stratified_subset(s, options.max_images, options.seed) for s in (train_set, val_set))
    if options.linear_augment is None:
        options = dataclasses.replace(options, linear_augment=len(train_set) <= LINEAR_AUGMENT_MAX_TRAIN)
    cache = FeatureCache(backbone, data, train_set, val_set, _plan(protocols, chosen), options, device, out_dir)
    from udi.eval import runners

    results: dict = {"source": provenance(backbone, weights, data, cache, full_sizes, protocols, chosen, options),
                     "seconds": {}, "images": {}}
    for protocol in protocols:
        start = time.perf_counter()
        with warnings.catch_warnings():
            # lbfgs on a few hundred samples often stops at max_iter; the probe is still valid.
            warnings.simplefilter("ignore", ConvergenceWarning)
            results[protocol] = getattr(runners, f"run_{protocol}")(
                cache=cache, features=["pixels"] if pixels else chosen.get(protocol, []), options=options,
                device=device, out_dir=out_dir,
            )
        if pixels:  # one result, shown under each feature name of the compared backbone
            results[protocol] = {f: results[protocol]["pixels"] for f in chosen[protocol]}
        results["seconds"][protocol] = round(time.perf_counter() - start, 1)
        results["images"][protocol] = _images_used(protocol, cache, options)
        if {"train", "val"} <= set(cache.banks):  # not worth a feature pass of its own (attnstats alone)
            results["chance"] = chance_levels(cache.banks["train"][1], cache.banks["val"][1])
        if on_protocol is not None:
            on_protocol(results)
    return results


def weights_step(weights: str | Path | None) -> int | None:
    """The training step of a run's weights (``step`` in a udi ``backbone.safetensors``'s metadata,
    the run directory's or the one beside a ``checkpoint.pt``), None when unknown (published weights)."""
    if weights is None:
        return None
    path = Path(weights)
    if path.is_dir() or path.suffix == ".pt":
        path = (path if path.is_dir() else path.parent) / "backbone.safetensors"
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            step = (handle.metadata() or {}).get("step")
        return int(step) if step is not None else None
    except Exception:  # not ours, unreadable: no step to report
        return None


def provenance(backbone, weights, data: str, cache: FeatureCache, full_sizes: dict[str, int], protocols: list[str],
               features: dict[str, list[str]], options: SuiteOptions) -> dict:
    """What a result was measured on, written into ``metrics.json`` / ``compare.json``: the weights
    (resolved path, step), method, architecture, data set (built-in name or resolved folder, its
    train/val sizes and the sizes used), evaluation image size and crop, the features and protocol
    options, the udi version and the date."""
    udi = sys.modules["udi"]  # the package, loaded already (importing it here would be an import cycle)

    pixels = isinstance(backbone, RawPixels)
    folder = data not in BUILTIN_DATASETS
    return {
        "weights": str(Path(weights).resolve()) if weights is not None else (backbone.identity if pixels else None),
        "step": weights_step(weights),
        "method": getattr(backbone, "pretrain_method", None),
        "architecture": None if pixels else backbone.arch_config(),
        "data": str(Path(data).resolve()) if folder else data,
        "data_sizes": full_sizes,
        "images_used": {"train": len(cache.sets["train"]), "val": len(cache.sets["val"])},
        "image_size": cache.image_size,
        "crop_fraction": cache.crop_fraction,
        "preprocessing": eval_preprocessing(data),
        **({"canvas_size": EVAL_CANVAS_SIZE} if folder else {}),  # the augmented linear probe's random crops
        "protocols": list(protocols),
        "features": {p: f for p, f in features.items() if p in protocols},
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()
                    if k != "progress"},
        "udi_version": udi.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def linear_note(results: dict) -> str | None:
    """How the linear probe of ``results`` was trained (None when it did not run)."""
    linear = results.get("linear") or {}
    augmented = {m.get("augmented") for m in linear.values() if isinstance(m, dict)}
    if not augmented:
        return None
    if augmented == {True}:
        return "linear probe: augmented (features recomputed every epoch)"
    return (f"linear probe: cached features, no augmentation (the default above {LINEAR_AUGMENT_MAX_TRAIN} train "
            "images; --linear-augmented for the augmented probe)")


def write_results(path: str | Path, results: dict) -> None:
    """``results`` as JSON at ``path``, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _images_used(protocol: str, cache: FeatureCache, options: SuiteOptions) -> dict[str, int]:
    """How many train and val images ``protocol`` used (the token protocols keep a subset of train)."""
    n_train, n_val = len(cache.sets["train"]), len(cache.sets["val"])
    if protocol == "attnstats":
        return {"train": 0, "val": min(options.attn_images, n_val)}
    if protocol in ("selagg", "dense") and "train" in cache.banks:
        rows = cache.banks["train"][0].get("token_rows")
        return {"train": n_train if rows is None else len(rows), "val": n_val}
    return {"train": n_train, "val": n_val}


def images_note(results: dict) -> str:
    """``images (train / val): knn 10000 / 2000, selagg 5000 / 2000``, one entry per protocol."""
    used = results.get("images", {})
    return "images (train / val): " + ", ".join(f"{p} {n['train']} / {n['val']}" for p, n in used.items())


def summarize(results: dict) -> dict[str, float]:
    """One flat row of the headline numbers: ``{"knn k20 [cls]": 71.2, "linear [last4]": ...}``."""
    row: dict[str, float] = {}
    for feature, m in results.get("knn", {}).items():
        k20 = [k for k in m if k.startswith("knn_top1_k")]
        key = "knn_top1_k20" if "knn_top1_k20" in m else k20[0]
        row[f"knn {key[9:]} [{feature}]"] = m[key]
    for feature, m in results.get("linear", {}).items():
        row[f"linear [{feature}]"] = m["linear_top1_best"]
    for feature, m in results.get("lowshot", {}).items():
        for key, value in m.items():
            if key.endswith("_top1"):
                row[f"{key[8:-5]} shot [{feature}]"] = value
    if "selagg" in results:
        row["selagg"] = results["selagg"]["selagg_top1_best"]
        row["linear [cls] (selagg ref)"] = results["selagg"]["linear_cls_top1_best"]
    if "layers" in results:
        row["best layer knn [cls]"] = results["layers"]["best_cls_knn_top1"]
        row["best layer knn [patch_mean]"] = results["layers"]["best_patch_mean_knn_top1"]
    if "dense" in results:
        row["dense mIoU"] = results["dense"]["dense_miou"]
    for feature, m in results.get("richness", {}).items():
        for key, value in m.items():
            row[f"{key} [{feature}]"] = value
    if "attnstats" in results:
        last = results["attnstats"]["blocks"][-1]
        row["last-block cls entropy"] = last["cls_entropy"]
    return row


def comparison_rows(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """One ``summarize`` row per model (name -> results of ``run_suite``), then a ``chance``
    row under the columns that have a chance level (from the first results that carry one)."""
    rows = {name: summarize(r) for name, r in results.items()}
    levels = next((r["chance"] for r in results.values() if "chance" in r), None)
    if levels is not None:
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        rows[CHANCE] = chance_row(levels, columns)
    return rows
