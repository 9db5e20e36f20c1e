import math

import torch

from udi.eval.linear import (
    LinearConfig,
    cosine_sgd,
    epoch_batches,
    num_batches,
    random_crop_flip_boxes,
    train_linear_augmented,
    train_linear_on_features,
)
from udi.models.vit import build_vit

C, D = 4, 8


def clusters(n: int, g: torch.Generator, spread: float = 1.0, offset: float = 50.0):
    """Gaussian clusters around 5 x one-hot centres, shifted by a large common offset
    (which standardisation removes). Returns x (n, D), y (n,)."""
    y = torch.randint(0, C, (n,), generator=g)
    x = 5 * torch.eye(D)[y] + spread * torch.randn(n, D, generator=g) + offset
    return x, y


def test_separable_clusters_are_learnt():
    g = torch.Generator().manual_seed(0)
    (tx, ty), (vx, vy) = clusters(512, g), clusters(256, g)
    result = train_linear_on_features(tx, ty, vx, vy, C, LinearConfig(epochs=10, lr=0.1, batch_size=64),
                                      progress=False)
    assert set(result) == {"linear_top1_best", "linear_top1_final"}
    assert result["linear_top1_final"] >= 98.0
    assert result["linear_top1_best"] >= result["linear_top1_final"]


def test_without_standardisation_on_centred_features():
    g = torch.Generator().manual_seed(1)
    (tx, ty), (vx, vy) = clusters(512, g, offset=0.0), clusters(256, g, offset=0.0)
    result = train_linear_on_features(tx, ty, vx, vy, C, LinearConfig(epochs=10, lr=0.1, batch_size=64),
                                      progress=False, normalize=False)
    assert result["linear_top1_final"] >= 98.0


def test_random_labels_stay_near_chance_and_best_is_at_least_final():
    g = torch.Generator().manual_seed(2)
    tx, vx = torch.randn(512, 32, generator=g), torch.randn(1000, 32, generator=g)
    ty, vy = torch.randint(0, C, (512,), generator=g), torch.randint(0, C, (1000,), generator=g)
    result = train_linear_on_features(tx, ty, vx, vy, C, LinearConfig(epochs=20, lr=0.1, batch_size=64),
                                      progress=False)
    assert 15.0 < result["linear_top1_final"] < 35.0
    assert result["linear_top1_final"] <= result["linear_top1_best"] < 40.0


def test_same_seed_same_result_and_global_rng_untouched():
    g = torch.Generator().manual_seed(3)
    (tx, ty), (vx, vy) = clusters(256, g, spread=4.0), clusters(256, g, spread=4.0)
    cfg = LinearConfig(epochs=3, lr=0.05, batch_size=32, seed=7)
    state = torch.get_rng_state()
    a = train_linear_on_features(tx, ty, vx, vy, C, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == train_linear_on_features(tx, ty, vx, vy, C, cfg, progress=False)


def test_cosine_schedule_and_linear_lr_scaling():
    opt, sched = cosine_sgd([torch.nn.Parameter(torch.zeros(1))], lr=0.001, batch_size=512,
                            weight_decay=0.0, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.002 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(lrs, expected))
    assert opt.param_groups[0]["momentum"] == 0.9


def test_epoch_batches_cover_every_index_without_singletons():
    g = torch.Generator().manual_seed(0)
    for n, bs in ((10, 3), (9, 3), (1, 4), (5, 8)):
        batches = epoch_batches(n, bs, g)
        assert len(batches) == num_batches(n, bs)
        assert sorted(torch.cat(batches).tolist()) == list(range(n))
        assert n == 1 or min(len(b) for b in batches) > 1


def test_train_boxes_are_random_resized_crops_half_flipped():
    g = torch.Generator().manual_seed(0)
    aspect = torch.full((2000,), 1.5)
    boxes = random_crop_flip_boxes(aspect, g)
    flipped = boxes[:, 0] > boxes[:, 2]
    assert 0.45 < flipped.float().mean() < 0.55
    assert boxes.min() >= 0 and boxes.max() <= 1
    area = (boxes[:, 2] - boxes[:, 0]).abs() * (boxes[:, 3] - boxes[:, 1])
    assert area.min() >= 0.08 - 1e-6


class TinySet(torch.utils.data.Dataset):
    """n identical images with labels 0..C-1: any difference between epochs' crops is augmentation."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.image = torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=g)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": self.image, "aspect": 32 / 24, "label": i % C}


def test_augmented_path_recomputes_features_every_epoch():
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=4, img_size=16)
    vit.train()
    crops = []
    forward = vit.forward_features

    def recording(x):
        crops.append(x.clone())
        return forward(x)

    vit.forward_features = recording
    val_x, val_y = torch.randn(8, 96), torch.arange(8) % C
    cfg = LinearConfig(epochs=3, lr=0.1, batch_size=4)
    result = train_linear_augmented(vit, lambda t: t[:, 0], TinySet(8), val_x, val_y, C, cfg, image_size=16,
                                    progress=False)
    assert set(result) == {"linear_top1_best", "linear_top1_final"}
    assert result["linear_top1_best"] >= result["linear_top1_final"]
    assert len(crops) == 3 * 2  # epochs x batches
    assert all(c.shape == (4, 3, 16, 16) for c in crops)
    # The images are identical, so different inputs across epochs come from new crops / flips.
    assert not torch.allclose(crops[0], crops[2])
    assert vit.training  # the caller's mode is restored

    del vit.forward_features
    again = train_linear_augmented(vit, lambda t: t[:, 0], TinySet(8), val_x, val_y, C, cfg, image_size=16,
                                   progress=False)
    assert again == result


def test_augmented_path_with_intermediate_blocks():
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=4, img_size=16)

    def last_two_cls(states):
        assert len(states) == 2
        return torch.cat([s[:, 0] for s in states], dim=1)

    val_x, val_y = torch.randn(6, 2 * 96), torch.arange(6) % C
    result = train_linear_augmented(vit, last_two_cls, TinySet(6), val_x, val_y, C,
                                    LinearConfig(epochs=1, batch_size=4), image_size=16, progress=False,
                                    intermediate_blocks=(-2, -1))
    assert 0.0 <= result["linear_top1_final"] <= 100.0
