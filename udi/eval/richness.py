"""Representation richness: what frozen features keep beyond the main label.

Over-compression (the failure the UDI paper targets) shows as features that classify
the main label well but have lost the other content of the image. On the built-in
``scenes`` data every image carries extra targets (``udi/data/scenes.py``); a linear
probe per target measures how much of each survives:

- ``present`` (which of the 10 shapes appear, multi-hot): one-vs-rest binary logistic
  regression per class, scored by average precision of its decision function; the
  metric ``present_map`` is the mean over classes, skipping classes without a positive
  val image (their AP is undefined). A class constant over the (sub-sampled) train
  split gets a constant score, i.e. chance-level AP.
- ``color`` (8 hue bins), ``position`` (4 quadrants), ``count`` (1..3), ``background``
  (5 textures): multinomial logistic regression, top-1 accuracy.

All probes are L2 logistic regressions with a fixed ``C`` (default 0.1: with weaker
regularisation the fit on 10k images does not converge in 1000 L-BFGS steps, and the
numbers would depend on the iteration cap; ``udi.eval.logreg``, the
objective of scikit-learn's ``LogisticRegression``, solved to convergence), on features
standardised with the train statistics. The 10 presence probes are fitted jointly (they
are independent binary problems sharing one matmul). Cost: about a second for 10k x 384
train features on one core (``max_train`` caps it).
"""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from udi.eval.logreg import decision_function, fit_logistic

RICHNESS_TARGETS = ("present", "color", "position", "count", "background")


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def presence_map(train_x: np.ndarray, train_p: np.ndarray, val_x: np.ndarray, val_p: np.ndarray, C: float) -> float:
    """Mean average precision (%) of one-vs-rest probes: x (N, D) / (M, D) standardised,
    p (N, K) / (M, K) multi-hot; classes without a positive val row are skipped."""
    weight, bias = fit_logistic(torch.from_numpy(train_x), torch.from_numpy(train_p), train_p.shape[1], C,
                                multilabel=True)
    scores = decision_function(torch.from_numpy(val_x), weight, bias).numpy()
    aps = []
    for j in range(train_p.shape[1]):
        if not val_p[:, j].any():
            continue
        # A class constant over train gets constant scores: chance-level AP.
        column = scores[:, j] if np.unique(train_p[:, j]).size > 1 else np.zeros(len(val_x))
        aps.append(average_precision_score(val_p[:, j], column))
    if not aps:
        raise ValueError("no 'present' class has a positive val example")
    return 100.0 * float(np.mean(aps))


def class_accuracy(train_x: np.ndarray, train_t: np.ndarray, val_x: np.ndarray, val_t: np.ndarray, C: float) -> float:
    """Top-1 accuracy (%) of a multinomial probe; t (N,) / (M,) integer targets."""
    classes, train_ids = np.unique(train_t, return_inverse=True)
    if classes.size < 2:  # a single train class: the probe can only predict it
        return 100.0 * float(np.mean(val_t == classes[0]))
    weight, bias = fit_logistic(torch.from_numpy(train_x), torch.from_numpy(train_ids), classes.size, C)
    predicted = classes[decision_function(torch.from_numpy(val_x), weight, bias).argmax(1).numpy()]
    return 100.0 * float(np.mean(predicted == val_t))


def richness_eval(
    train_x: torch.Tensor,
    train_targets: dict[str, torch.Tensor],
    val_x: torch.Tensor,
    val_targets: dict[str, torch.Tensor],
    C: float = 0.1,
    max_train: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Linear-probe richness of frozen features train_x (N, D) / val_x (M, D).

    Targets: ``present`` (N, 10) float multi-hot, ``color`` / ``position`` / ``count`` /
    ``background`` (N,) int; those of :data:`RICHNESS_TARGETS` found in both dicts are
    probed (others ignored). ``max_train`` keeps a random (``seed``) subset of the
    train rows to bound the cost.

    Returns ``{"present_map": %, "color_acc": %, "position_acc": %, "count_acc": %,
    "background_acc": %}`` (the probed targets only).
    """
    names = [t for t in RICHNESS_TARGETS if t in train_targets and t in val_targets]
    if not names:
        raise ValueError(f"no richness target found; expected some of {RICHNESS_TARGETS}")
    train_x, val_x = _numpy(train_x).astype(np.float64), _numpy(val_x).astype(np.float64)
    rows = np.arange(len(train_x))
    if max_train is not None and max_train < len(train_x):
        rows = np.sort(np.random.default_rng(seed).choice(len(train_x), size=max_train, replace=False))
    scaler = StandardScaler().fit(train_x[rows])
    train_x, val_x = scaler.transform(train_x[rows]), scaler.transform(val_x)
    results = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("richness probes", total=len(names))
        for name in names:
            train_t, val_t = _numpy(train_targets[name])[rows], _numpy(val_targets[name])
            if name == "present":
                results["present_map"] = presence_map(train_x, train_t, val_x, val_t, C)
            else:
                results[f"{name}_acc"] = class_accuracy(train_x, train_t, val_x, val_t, C)
            bar.advance(task)
    return results
