import numpy as np
import pytest
import torch

from udi.eval.richness import presence_map, richness_eval


def scene_targets(n, seed):
    """Random targets shaped like the ``scenes`` ones: present (n, 10) float, the others (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    return {
        "present": (torch.rand(n, 10, generator=g) < 0.3).float(),
        "color": torch.randint(0, 8, (n,), generator=g),
        "position": torch.randint(0, 4, (n,), generator=g),
        "count": torch.randint(1, 4, (n,), generator=g),
        "background": torch.randint(0, 5, (n,), generator=g),
    }


def features(targets, encode, seed, dim=32):
    """Noise (n, dim), with the targets named in ``encode`` appended (one-hot / multi-hot)."""
    n = len(targets["color"])
    parts = [torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))]
    sizes = {"color": 8, "position": 4, "count": 4, "background": 5}
    for name in encode:
        t = targets[name]
        parts.append(t if name == "present" else torch.nn.functional.one_hot(t, sizes[name]).float())
    return torch.cat(parts, dim=1)


@pytest.fixture(scope="module")
def data():
    return scene_targets(2000, seed=0), scene_targets(500, seed=1)


def test_encoded_attributes_are_recovered_and_missing_ones_are_at_chance(data):
    train_t, val_t = data
    encode = ("present", "color", "background")
    result = richness_eval(features(train_t, encode, 2), train_t, features(val_t, encode, 3), val_t, progress=False)
    assert set(result) == {"present_map", "color_acc", "position_acc", "count_acc", "background_acc"}
    assert result["present_map"] > 95
    assert result["color_acc"] > 95 and result["background_acc"] > 95
    assert 15 < result["position_acc"] < 35  # 4 quadrants: chance 25%
    assert 23 < result["count_acc"] < 43  # 3 counts: chance 33%


def test_noise_features_are_at_chance(data):
    train_t, val_t = data
    result = richness_eval(features(train_t, (), 2), train_t, features(val_t, (), 3), val_t, progress=False)
    assert 5 < result["color_acc"] < 20  # 8 bins: chance 12.5%
    assert result["present_map"] < 45  # random scores: AP ~ prevalence 30%


def test_class_absent_from_val_is_skipped():
    train_t, val_t = scene_targets(400, seed=0), scene_targets(200, seed=1)
    train_p, val_p = train_t["present"].numpy(), val_t["present"].numpy()
    val_p[:, 3] = 0
    g = np.random.default_rng(0)
    train_x, val_x = g.normal(size=(400, 8)), g.normal(size=(200, 8))
    keep = [j for j in range(10) if j != 3]
    with_absent = presence_map(train_x, train_p, val_x, val_p, C=1.0)
    assert np.isfinite(with_absent)
    # the classes are fitted jointly: equal up to the solver tolerance
    assert with_absent == pytest.approx(presence_map(train_x, train_p[:, keep], val_x, val_p[:, keep], C=1.0), rel=1e-3)


def test_only_given_targets_are_probed_and_max_train_subsamples(data):
    train_t, val_t = data
    train_t = {"color": train_t["color"], "label": train_t["count"]}
    encode = ("color",)
    result = richness_eval(features(data[0], encode, 2), train_t, features(val_t, encode, 3), val_t,
                           max_train=200, progress=False)
    assert list(result) == ["color_acc"] and result["color_acc"] > 90
