import colorsys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from udi.data.scenes import NUM_HUE_BINS, SHAPES, TEXTURES, ScenesDataset, render_scene

N_SURVEY = 300


@pytest.fixture(scope="module")
def survey():
    """(image, targets) of the first N_SURVEY train scenes at 32 px."""
    return [render_scene(0, 0, i) for i in range(N_SURVEY)]


def test_names():
    assert SHAPES == (
        "circle", "square", "triangle", "diamond", "cross",
        "ring", "star", "hexagon", "half_disc", "bar",
    )
    assert TEXTURES == ("flat", "gradient", "stripes", "checker", "noise")


def _same(a, b):
    (ia, ta), (ib, tb) = a, b
    return np.array_equal(ia, ib) and all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_deterministic_and_distinct():
    assert _same(render_scene(3, 0, 17), render_scene(3, 0, 17))
    assert not _same(render_scene(3, 0, 17), render_scene(3, 0, 18))
    assert not _same(render_scene(3, 0, 17), render_scene(4, 0, 17))
    assert not _same(render_scene(3, 0, 17), render_scene(3, 1, 17))


def test_types_and_ranges(survey):
    for image, t in survey:
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert set(t) == {"label", "present", "color", "position", "count", "background", "mask"}
        assert all(type(t[k]) is int for k in ("label", "color", "position", "count", "background"))
        assert t["present"].dtype == np.float32 and t["present"].shape == (10,)
        assert set(np.unique(t["present"])) <= {0.0, 1.0}
        assert t["mask"].dtype == np.int64 and t["mask"].shape == (32, 32)
        assert 0 <= t["mask"].min() and t["mask"].max() <= 10
        assert 0 <= t["label"] < 10 and 0 <= t["color"] < NUM_HUE_BINS
        assert 0 <= t["position"] < 4 and 1 <= t["count"] <= 3 and 0 <= t["background"] < 5


def test_targets_consistent_with_mask(survey):
    for _, t in survey:
        in_mask = set(np.unique(t["mask"]).tolist()) - {0}
        present = set((np.flatnonzero(t["present"]) + 1).tolist())
        # Every drawn object keeps half its area visible, so every present class shows.
        assert in_mask == present
        assert t["present"][t["label"]] == 1.0
        assert 1 <= t["present"].sum() <= t["count"]


def test_single_object_colour_and_position(survey):
    singles = [(im, t) for im, t in survey if t["count"] == 1]
    assert len(singles) > 50
    for image, t in singles:
        ys, xs = np.nonzero(t["mask"] == t["label"] + 1)
        # The shape is symmetric about its centre or centred on its centroid.
        quadrant = int(xs.mean() + 0.5 >= 16) + 2 * int(ys.mean() + 0.5 >= 16)
        assert quadrant == t["position"]
        # Interior pixels (all 4 neighbours in the object) carry the object colour.
        m = np.pad(t["mask"] == t["label"] + 1, 1)
        interior = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        r, g, b = image[interior].mean(axis=0) / 255.0
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        assert int(h * NUM_HUE_BINS) == t["color"]
        assert s > 0.6 and v > 0.7


def test_objects_stand_out_from_background(survey):
    # Object colours are saturated and bright, backgrounds desaturated and darker.
    for image, t in survey[:50]:
        hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in image.reshape(-1, 3)]).reshape(32, 32, 3)
        assert hsv[..., 1][t["mask"] == 0].mean() < 0.35
        assert hsv[..., 1][t["mask"] > 0].mean() > 0.5


def test_textures_are_faint_but_present(survey):
    # V of the two texture colours differs by 0.2-0.35 before TEXTURE_CONTRAST (0.25) scales it.
    for image, t in survey[:100]:
        value = image.max(axis=2)[t["mask"] == 0] / 255.0  # V of HSV
        spread = np.percentile(value, 95) - np.percentile(value, 5)
        if TEXTURES[t["background"]] == "flat":
            assert spread < 0.01
        elif TEXTURES[t["background"]] in ("stripes", "checker", "noise"):
            assert 0.02 < spread < 0.1, (TEXTURES[t["background"]], spread)


def test_all_values_occur(survey):
    labels = {t["label"] for _, t in survey}
    present = set(np.flatnonzero(sum(t["present"] for _, t in survey)).tolist())
    assert labels == present == set(range(10))
    assert {t["background"] for _, t in survey} == set(range(5))
    assert {t["color"] for _, t in survey} == set(range(NUM_HUE_BINS))
    assert {t["position"] for _, t in survey} == set(range(4))
    assert {t["count"] for _, t in survey} == {1, 2, 3}


def test_generation_speed():
    render_scene(0, 0, 0)
    start = time.perf_counter()
    for i in range(1000):
        render_scene(0, 0, i)
    # About 0.25 s on one core; generous for loaded CI machines.
    assert time.perf_counter() - start < 5.0


def test_other_sizes():
    for size in (16, 64):
        image, t = render_scene(0, 1, 5, size=size)
        assert image.shape == (size, size, 3) and t["mask"].shape == (size, size)
    with pytest.raises(ValueError):
        render_scene(0, 0, 0, size=4)


def test_dataset_defaults_and_errors():
    assert len(ScenesDataset("train")) == 10_000
    assert len(ScenesDataset("val")) == 2_000
    assert len(ScenesDataset("val", num_images=7)) == 7
    with pytest.raises(ValueError, match="split"):
        ScenesDataset("test")
    with pytest.raises(IndexError):
        ScenesDataset("val", num_images=7)[7]


def test_dataset_item():
    ds = ScenesDataset("val", size=32, num_images=20, seed=5)
    item = ds[3]
    image, t = render_scene(5, 1, 3, 32)
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert torch.equal(item["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert item["aspect"] == 1.0 and item["index"] == 3 and item["failed"] == 0
    assert item["label"] == t["label"]
    assert item["present"].dtype == torch.float32 and item["present"].shape == (10,)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (32, 32)
    for k in ("color", "position", "count", "background"):
        assert item[k] == t[k]
    assert ds.classes == list(SHAPES)


def test_dataset_collates():
    batch = next(iter(DataLoader(ScenesDataset("train", num_images=8), batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert batch["present"].shape == (4, 10) and batch["label"].shape == (4,)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_rendered_items_are_kept_and_equal_fresh_renders():
    data = ScenesDataset("train", size=16, num_images=8, seed=3)
    first = data[5]
    assert 5 in data._rendered and len(data._rendered) == 1
    first["image"].zero_()
    first["mask"].zero_()
    first["present"].zero_()  # a consumer writing into its item must not change the kept copy
    again = data[5]
    image, targets = render_scene(3, data.split_id, 5, 16)  # a fresh render, outside every memo
    assert torch.equal(again["image"], torch.from_numpy(image).permute(2, 0, 1))
    for key in ("present", "mask", "label", "color", "position", "count", "background"):
        got = torch.as_tensor(again[key])
        assert torch.equal(got, torch.as_tensor(targets[key]).to(got.dtype)), key
    assert again["mask"].dtype == torch.int64 and again["image"].dtype == torch.uint8


def test_data_sets_of_one_seed_split_and_size_share_their_renders():
    # Pretraining, the online k-NN and each evaluation row build their own data set of the same images.
    first = ScenesDataset("train", size=16, num_images=8, seed=7)
    item = first[2]
    second = ScenesDataset("train", size=16, num_images=20, seed=7)  # image i does not depend on the count
    assert second._rendered is first._rendered and 2 in second._rendered
    assert torch.equal(second[2]["image"], item["image"])
    for other in (ScenesDataset("val", size=16, seed=7), ScenesDataset("train", size=24, seed=7),
                  ScenesDataset("train", size=16, seed=8)):
        assert other._rendered is not first._rendered
