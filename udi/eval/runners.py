"""Glue between the feature cache of ``udi.eval.suite`` and each protocol's function.

Each ``run_<protocol>(cache, features, options, device, out_dir)`` returns that protocol's
results; the algorithms live in one file per protocol (knn.py, linear.py, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from udi.data.scenes import SHAPES
from udi.eval.attnstats import collect_attention_stats, plot_attention_stats
from udi.eval.dense import DenseConfig, dense_probe
from udi.eval.features import eval_crops, on_canvas
from udi.eval.knn import knn_accuracy
from udi.eval.layers import layerwise_eval
from udi.eval.linear import LinearConfig, train_linear_augmented, train_linear_on_features
from udi.eval.lowshot import lowshot_eval
from udi.eval.richness import RICHNESS_TARGETS, richness_eval
from udi.eval.selagg import SelAggConfig, train_selective_aggregation
from udi.eval.subsets import stratified_subset


def _num_classes(cache) -> int:
    return int(max(cache.get("train")[1]["label"].max(), cache.get("val")[1]["label"].max())) + 1


def run_knn(cache, features, options, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    return {f: knn_accuracy(train[f], train_t["label"], val[f], val_t["label"], options.knn_k,
                            options.knn_temperature) for f in features}


def _feature_fn(feature: str, n_cls: int):
    """Turns the backbone's output in ``train_linear_augmented`` into the cached feature."""
    from udi.eval.features import select_features

    if feature.startswith("last"):
        return lambda states: torch.cat([s[:, 0] for s in states], dim=1)
    return lambda tokens: select_features(tokens, n_cls, feature)


def run_linear(cache, features, options, device, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    cfg = LinearConfig(epochs=options.linear_epochs, seed=options.seed)
    classes = _num_classes(cache)
    results = {}
    for feature in features:
        if options.linear_augment:
            blocks = None
            if feature.startswith("last"):
                blocks = list(range(-int(feature[4:]), 0))
            results[feature] = train_linear_augmented(  # random crops: of the whole image, on its canvas
                cache.backbone, _feature_fn(feature, cache.backbone.n_cls), on_canvas(cache.sets["train"]),
                val[feature], val_t["label"], classes, cfg, image_size=cache.image_size, device=device,
                progress=options.progress, intermediate_blocks=blocks,
            )
        else:
            results[feature] = train_linear_on_features(
                train[feature], train_t["label"], val[feature], val_t["label"], classes, cfg, device=device,
                progress=options.progress,
            )
        results[feature]["augmented"] = options.linear_augment
    return results


def run_lowshot(cache, features, options, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    return {f: lowshot_eval(train[f], train_t["label"], val[f], val_t["label"], repeats=options.lowshot_repeats,
                            seed=options.seed, progress=options.progress) for f in features}


def _token_rows(bank: dict, key: str) -> torch.Tensor:
    """Rows of the bank whose patch tokens ``bank[key]`` holds (all, unless a cap chose some)."""
    return bank.get("token_rows", torch.arange(len(bank[key])))


def run_selagg(cache, options, device, **_) -> dict:
    """Selective Aggregation on the last block's patch tokens, next to a linear probe on [cls]
    trained the same way (cached features, same epochs), so the gain is visible."""
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    classes = _num_classes(cache)
    tokens, rows = train["tokens_prenorm"], _token_rows(train, "tokens_prenorm")
    labels = train_t["label"][rows]
    result = train_selective_aggregation(
        tokens, labels, val["tokens_prenorm"], val_t["label"], classes,
        SelAggConfig(epochs=options.selagg_epochs, seed=options.seed), device=device, progress=options.progress,
    )
    reference = train_linear_on_features(
        train["cls"][rows], labels, val["cls"], val_t["label"], classes,
        LinearConfig(epochs=options.selagg_epochs, seed=options.seed), device=device, progress=options.progress,
    )
    result["linear_cls_top1_best"] = reference["linear_top1_best"]
    result["train_images"] = len(tokens)
    return result


def run_layers(cache, options, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    names = [k for k in train if k.startswith("block")]
    return layerwise_eval({k: train[k] for k in names}, train_t["label"], {k: val[k] for k in names}, val_t["label"],
                          k=20, temperature=options.knn_temperature)


def run_dense(cache, options, device, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    tokens = train["tokens"]
    return dense_probe(
        tokens, train_t["mask"][_token_rows(train, "tokens")], val["tokens"], val_t["mask"], num_classes=len(SHAPES) + 1,
        cfg=DenseConfig(epochs=options.dense_epochs, seed=options.seed), device=device, progress=options.progress,
        class_names=["background", *SHAPES],
    )


def run_richness(cache, features, options, **_) -> dict:
    (train, train_t), (val, val_t) = cache.get("train"), cache.get("val")
    pick = lambda targets: {k: targets[k] for k in RICHNESS_TARGETS}
    return {f: richness_eval(train[f], pick(train_t), val[f], pick(val_t), seed=options.seed,
                             progress=options.progress) for f in features}


def run_attnstats(cache, options, device, out_dir=None, **_) -> dict:
    """Statistics over ``options.attn_images`` val images (class-stratified, ``options.seed``);
    JSON and plots in ``out_dir``."""
    subset = stratified_subset(cache.sets["val"], options.attn_images, options.seed)
    loader = DataLoader(subset, batch_size=min(options.batch_size, 128))

    def images():
        for batch in loader:
            yield eval_crops(batch["image"].to(device), batch["aspect"], cache.image_size, cache.crop_fraction,
                             batch.get("cropped"))

    stats = collect_attention_stats(cache.backbone, images(), device=device, progress=options.progress)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attnstats.json").write_text(json.dumps(stats, indent=2))
        stats["plots"] = [str(p) for p in plot_attention_stats(stats, out)]
    return stats
