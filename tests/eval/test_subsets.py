"""Class-stratified, seeded subsets (udi.eval.subsets) and where the evaluation uses them."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from udi.data.datasets import ArrayDataset, ImageFolderDataset
from udi.eval.subsets import dataset_labels, stratified_indices, stratified_subset
from udi.eval.suite import FeatureCache, SuiteOptions, _plan
from udi.models.vit import build_vit


def test_stratified_indices_are_proportional_seeded_and_sorted():
    labels = np.repeat([0, 1, 2, 3], [100, 100, 100, 700])  # class-sorted, as a folder lists them
    picked = stratified_indices(labels, 100, seed=3)
    assert len(picked) == 100 and list(picked) == sorted(set(picked.tolist()))
    assert np.bincount(labels[picked]).tolist() == [10, 10, 10, 70]
    assert np.array_equal(picked, stratified_indices(labels, 100, seed=3))
    assert not np.array_equal(picked, stratified_indices(labels, 100, seed=4))
    assert list(stratified_indices(labels, 5000)) == list(range(1000))


def test_a_small_cap_still_spreads_over_classes():
    labels = np.repeat(np.arange(3), 3)  # the case: 3 classes x 3 images, cap 3
    assert sorted(labels[stratified_indices(labels, 3)].tolist()) == [0, 1, 2]  # before: [0, 0, 0]


def test_dataset_labels_without_decoding_and_through_subsets(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / name / f"{i}.png")
    folder = ImageFolderDataset(tmp_path, canvas_size=4)
    assert dataset_labels(folder).tolist() == [0, 0, 1, 1]
    assert dataset_labels(Subset(folder, [3, 0])).tolist() == [1, 0]
    array = ArrayDataset(np.zeros((3, 4, 4, 3), np.uint8), np.array([2, 0, 1]), ["x", "y", "z"])
    assert dataset_labels(array).tolist() == [2, 0, 1]
    assert stratified_subset(array, None) is array and stratified_subset(array, 9) is array
    assert len(stratified_subset(array, 2)) == 2


def test_token_protocols_keep_a_stratified_subset_of_train():
    """selagg/dense keep the patch tokens of max_token_images train images: all classes, and the
    bank says which rows they are."""
    images = np.random.default_rng(0).integers(0, 255, (9, 8, 8, 3), dtype=np.uint8)
    train = ArrayDataset(images, np.repeat(np.arange(3), 3), ["a", "b", "c"])
    backbone = build_vit("vit_nano", patch_size=4, img_size=8, depth=1).eval()
    options = SuiteOptions(max_token_images=3, progress=False)
    cache = FeatureCache(backbone, "digits", train, train, _plan(["selagg"], {}), options, "cpu", None)
    bank, targets = cache.get("train")
    rows = bank["token_rows"]
    assert bank["tokens_prenorm"].shape[0] == 3 and sorted(targets["label"][rows].tolist()) == [0, 1, 2]
    full = FeatureCache(backbone, "digits", train, train, _plan(["selagg"], {}),
                        SuiteOptions(progress=False), "cpu", None).get("train")[0]
    assert "token_rows" not in full
    assert torch.equal(bank["tokens_prenorm"], full["tokens_prenorm"][rows])
