"""Class-stratified, seeded subsets of an evaluation split.

A folder lists its images sorted by path, so on an ImageFolder layout (ImageNet) "the first N
images" are the first few classes. Every cap in the evaluation (``--max-images``, the train
images whose patch tokens selagg and dense keep, the val images of attnstats) takes instead
``stratified_indices``: each class in proportion to its size, the members drawn at random with
a fixed seed.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Subset


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """(n,) int64 labels of ``dataset`` (-1: unlabeled), without decoding images where the data
    set lists them (``targets``: folders, arrays); through ``Subset``; else item by item."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets, dtype=np.int64)
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` of the items (all of them when ``n >= len(labels)``).

    Each class contributes in proportion to its size (within one item): the members of a class
    are shuffled with ``seed``, the j-th of a class of size m gets the key (j + 0.5) / m, and the
    ``n`` smallest keys are kept (ties broken at random, also with ``seed``)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = np.lexsort((rng.random(len(labels)), keys))
    return np.sort(order[:n])


def stratified_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``dataset`` itself, or a ``Subset`` of ``n`` of its items (``stratified_indices``)."""
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, stratified_indices(dataset_labels(dataset), n, seed).tolist())
