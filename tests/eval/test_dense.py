import math

import pytest
import torch
import torch.nn.functional as F

from udi.eval.dense import DenseConfig, confusion_matrix, dense_probe, iou_from_confusion


def make_data(n, g, num_classes, mask_size, informative, seed, dim=16):
    """Patch classes on a g x g grid in blocks of 2x2 patches (so objects span several
    patches), masks = nearest upsampling to mask_size; tokens = scaled one-hot of the
    patch class + noise when ``informative``, pure noise otherwise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (n, 1, g // 2, g // 2), generator=gen).float()
    patch_cls = F.interpolate(coarse, size=(g, g), mode="nearest")
    masks = F.interpolate(patch_cls, size=mask_size, mode="nearest")[:, 0].long()
    patch_cls = patch_cls.flatten(1).long()  # (n, g*g), row-major
    tokens = 0.3 * torch.randn(n, g * g, dim, generator=gen)
    if informative:
        tokens[..., :num_classes] += 3.0 * F.one_hot(patch_cls, num_classes).float()
    return tokens, masks


def test_confusion_and_iou_hand_computed():
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 0], [1, 2]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]  # rows = target
    miou, per_class = iou_from_confusion(conf)
    # IoU = TP / (TP + FP + FN): class 0: 1/2, class 1: 1/3, class 2: 0/1.
    assert per_class == pytest.approx([50.0, 100 / 3, 0.0])
    assert miou == pytest.approx((50.0 + 100 / 3 + 0.0) / 3)


def test_class_absent_from_both_is_excluded():
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 0], [1, 2]])
    miou, per_class = iou_from_confusion(confusion_matrix(pred, target, 4))
    assert per_class[3] is None
    assert miou == pytest.approx((50.0 + 100 / 3 + 0.0) / 3)
    # Predicted but absent from the ground truth: IoU 0, counted.
    miou, per_class = iou_from_confusion(confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4))
    assert per_class == [50.0, None, None, 0.0]
    assert miou == pytest.approx(25.0)


def test_confusion_skips_out_of_range_targets():
    conf = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 255, 1]), 2)
    assert conf.tolist() == [[1, 0], [0, 1]]


def test_informative_tokens_give_high_miou_random_tokens_low():
    g, C, size = 4, 4, (16, 16)
    cfg = DenseConfig(epochs=15, lr=1e-2, batch_size=32)
    train = make_data(128, g, C, size, True, seed=0)
    val = make_data(64, g, C, size, True, seed=1)
    good = dense_probe(*train, *val, num_classes=C, cfg=cfg, progress=False)
    assert good["dense_miou"] > 95.0

    train = make_data(128, g, C, size, False, seed=0)
    val = make_data(64, g, C, size, False, seed=1)
    bad = dense_probe(*train, *val, num_classes=C, cfg=cfg, progress=False)
    assert bad["dense_miou"] < 40.0


def test_mask_size_differs_from_grid_fp16_tokens_and_class_names():
    # Non-integer upsampling factor (4 -> 10), fp16 tokens, different train/val mask sizes.
    g, C = 4, 3
    train_tokens, train_masks = make_data(64, g, C, (12, 12), True, seed=2)
    val_tokens, val_masks = make_data(32, g, C, (10, 10), True, seed=3)
    names = ["background", "circle", "square"]
    out = dense_probe(train_tokens.half(), train_masks, val_tokens.half(), val_masks, C,
                      DenseConfig(epochs=10, lr=1e-2, batch_size=16), progress=False, class_names=names)
    assert list(out["dense_iou_per_class"]) == names
    assert all(0.0 <= v <= 100.0 for v in out["dense_iou_per_class"].values())
    assert out["dense_miou"] > 80.0
    assert not math.isnan(out["dense_miou"])


def test_absent_class_reported_as_none():
    g, C = 4, 3
    train = make_data(32, g, C, (8, 8), True, seed=4)
    val = make_data(16, g, C, (8, 8), True, seed=5)
    out = dense_probe(*train, *val, num_classes=C + 1, cfg=DenseConfig(epochs=5, lr=1e-2, batch_size=16),
                      progress=False)
    assert out["dense_iou_per_class"]["3"] is None
    assert out["dense_miou"] == pytest.approx(
        sum(out["dense_iou_per_class"][str(c)] for c in range(C)) / C)


def test_rejects_non_square_grid_and_wrong_names():
    tokens, masks = torch.randn(2, 6, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError):
        dense_probe(tokens, masks, tokens, masks, 2, DenseConfig(epochs=1), progress=False)
    tokens = torch.randn(2, 4, 4)
    with pytest.raises(ValueError):
        dense_probe(tokens, masks, tokens, masks, 2, DenseConfig(epochs=1), progress=False, class_names=["a"])
