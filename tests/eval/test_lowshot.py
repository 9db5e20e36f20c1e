import numpy as np
import torch

import udi.eval.lowshot as lowshot
from udi.eval.lowshot import fraction_name, lowshot_eval, sample_per_class, select_C


def clusters(per_class, noise_seed, num_classes=10, dim=32, spread=0.5):
    """Gaussian clusters around fixed random centres: x (n, dim) float32, y (n,) int64."""
    centres = np.random.default_rng(0).normal(size=(num_classes, dim)) * 3
    y = np.repeat(np.arange(num_classes), per_class)
    x = centres[y] + spread * np.random.default_rng(noise_seed).normal(size=(len(y), dim))
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def test_subset_sizes_round_half_up_with_at_least_one_per_class():
    labels = np.repeat([0, 1, 2, 3], [5, 50, 150, 26])
    for fraction, expected in ((0.1, [1, 5, 15, 3]), (0.01, [1, 1, 2, 1])):
        idx = sample_per_class(torch.from_numpy(labels), fraction, np.random.default_rng(0))
        assert np.unique(idx).size == idx.size
        assert np.bincount(labels[idx], minlength=4).tolist() == expected


def test_fraction_names():
    assert [fraction_name(f) for f in (0.01, 0.1, 0.5, 0.005)] == ["1pct", "10pct", "50pct", "0.5pct"]


def test_select_C_falls_back_with_a_single_example_class():
    x = np.random.default_rng(0).normal(size=(7, 4))
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    assert select_C(x, y, (0.1, 1.0), 42.0, np.random.default_rng(0)) == 42.0
    assert select_C(x[:6], y[:6], (0.1, 1.0), 42.0, np.random.default_rng(0)) in (0.1, 1.0)


def test_separable_clusters_are_learnt_from_few_labels(monkeypatch):
    train_x, train_y = clusters(100, noise_seed=1)
    val_x, val_y = clusters(20, noise_seed=2)

    drawn = []

    def recording(labels, fraction, rng):
        idx = sample_per_class(labels, fraction, rng)
        drawn.append((fraction, tuple(idx)))
        return idx

    monkeypatch.setattr(lowshot, "sample_per_class", recording)
    result = lowshot_eval(train_x, train_y, val_x, val_y, progress=False)
    assert set(result) == {"lowshot_1pct_top1", "lowshot_1pct_top1_std", "lowshot_10pct_top1", "lowshot_10pct_top1_std"}
    assert result["lowshot_10pct_top1"] > 98
    assert result["lowshot_1pct_top1"] > 90
    assert result["lowshot_1pct_top1_std"] >= 0 and result["lowshot_10pct_top1_std"] >= 0
    for fraction, size in ((0.01, 10), (0.1, 100)):
        subsets = [idx for f, idx in drawn if f == fraction]
        assert len(subsets) == 3 and len(set(subsets)) == 3
        assert all(len(idx) == size for idx in subsets)
        for idx in subsets:
            assert np.bincount(train_y.numpy()[list(idx)]).tolist() == [size // 10] * 10


def test_random_features_are_near_chance():
    g = torch.Generator().manual_seed(0)
    train_x, val_x = torch.randn(1000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y, val_y = torch.randint(0, 10, (1000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    result = lowshot_eval(train_x, train_y, val_x, val_y, progress=False)
    assert 4 < result["lowshot_1pct_top1"] < 18
    assert 4 < result["lowshot_10pct_top1"] < 18
    assert result["lowshot_10pct_top1_std"] > 0


def test_deterministic_given_the_seed():
    g = torch.Generator().manual_seed(0)
    train_x, val_x = torch.randn(300, 8, generator=g), torch.randn(100, 8, generator=g)
    train_y, val_y = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (100,), generator=g)
    run = lambda seed: lowshot_eval(train_x, train_y, val_x, val_y, fractions=(0.1,), seed=seed, progress=False)
    assert run(0) == run(0)
    draw = lambda seed: sample_per_class(train_y, 0.1, np.random.default_rng([seed, 0]))
    assert np.array_equal(draw(0), draw(0)) and not np.array_equal(draw(0), draw(1))
