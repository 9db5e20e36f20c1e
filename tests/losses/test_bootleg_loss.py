"""Bootleg loss (udi.losses.bootleg): target layers, teacher targets, hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from udi.losses.bootleg import BootlegLoss, resolve_target_layers, teacher_targets
from udi.models.bootleg_network import BootlegNetwork
from udi.models.vit import build_vit


@pytest.mark.parametrize("depth, expected", [(12, [2, 5, 8, 11]), (4, [0, 1, 2, 3]), (6, [1, 2, 4, 5]), (2, [0, 1]), (1, [0])])
def test_auto_layers_are_depths_quarter_half_three_quarters_and_last(depth, expected):
    assert resolve_target_layers("auto", depth) == expected


@pytest.mark.parametrize("bad", [[4], [], [1, 1], "all", [True], 3, [-1]])
def test_bad_target_layers_name_the_key(bad):
    with pytest.raises(ValueError, match=r"'bootleg.target_layers' must be .* \[0, 3\]"):
        resolve_target_layers(bad, 4)


def test_explicit_layers_keep_their_order():
    assert resolve_target_layers([3, 0], 4) == [3, 0]


def test_last_block_targets_are_the_normalised_last_hidden_state_at_the_masked_patches():
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=8, img_size=32).eval()  # 16 patches, depth 4
    teacher = BootlegNetwork(vit, None, [vit.depth - 1])
    images = torch.randn(2, 3, 32, 32)
    idx = torch.tensor([[[0, 1, 4], [10, 11, 14]], [[5, 6, 9], [2, 3, 7]]])  # (B=2, n_t=2, K=3)
    with torch.no_grad():
        targets = teacher_targets(teacher.teacher_hidden(images), idx)
        last = vit.forward_blocks(images)[:, vit.n_cls:]  # the last block's output, before the final norm
    assert targets.shape == (2 * 2, 3, 96)
    for j in range(2):
        for b in range(2):
            for k in range(3):
                token = last[b, idx[b, j, k]]
                expected = (token - token.mean()) / torch.sqrt(token.var(unbiased=False) + 1e-5)
                torch.testing.assert_close(targets[j * 2 + b, k], expected, rtol=1e-5, atol=1e-5)
    # Not the final-norm output (whose affine is not the identity once trained): make that visible.
    with torch.no_grad():
        vit.norm.weight.mul_(torch.linspace(0.5, 2.0, 96))
        vit.norm.bias.add_(0.3)
        unchanged = teacher_targets(teacher.teacher_hidden(images), idx)
    torch.testing.assert_close(unchanged, targets)


def test_layers_are_concatenated_in_order():
    hidden = [torch.randn(1, 4, 3), torch.randn(1, 4, 3)]
    idx = torch.tensor([[[2]]])
    out = teacher_targets(hidden, idx)  # (1, 1, 6)
    torch.testing.assert_close(out[0, 0, :3], F.layer_norm(hidden[0][0, 2], (3,)))
    torch.testing.assert_close(out[0, 0, 3:], F.layer_norm(hidden[1][0, 2], (3,)))


@pytest.mark.parametrize("kind", ["smooth_l1", "mse", "l1"])
def test_loss_is_zero_for_exact_predictions(kind):
    loss = BootlegLoss([1, 3], kind)
    targets = teacher_targets([torch.randn(2, 9, 4), torch.randn(2, 9, 4)], torch.randint(0, 9, (2, 3, 2)))
    terms = loss(targets.clone(), targets)
    assert set(terms) == {"loss", "block1", "block3"}
    assert all(v.item() == 0.0 for v in terms.values())
    assert loss(targets + 0.1, targets)["loss"].item() > 0


@pytest.mark.parametrize("kind, block_a, block_b", [("smooth_l1", 0.75, 0.0625), ("mse", 2.0, 0.125), ("l1", 1.0, 0.25)])
def test_hand_computed_case(kind, block_a, block_b):
    # One image, two patches, one target block = patch 1, two layers of width 2.
    hidden = [torch.tensor([[[5.0, 5.0], [1.0, 3.0]]]), torch.tensor([[[0.0, 0.0], [10.0, 6.0]]])]
    targets = teacher_targets(hidden, torch.tensor([[[1]]]))
    # LN without affine: [1, 3] -> [-1, 1] and [10, 6] -> [1, -1] (up to eps = 1e-5).
    torch.testing.assert_close(targets, torch.tensor([[[-1.0, 1.0, 1.0, -1.0]]]), rtol=0, atol=1e-4)
    prediction = torch.tensor([[[-1.0, 3.0, 1.0, -1.5]]])  # errors 0, 2 | 0, 0.5
    terms = BootlegLoss([2, 5], kind)(prediction, torch.tensor([[[-1.0, 1.0, 1.0, -1.0]]]))
    assert terms["block2"].item() == pytest.approx(block_a)
    assert terms["block5"].item() == pytest.approx(block_b)
    assert terms["loss"].item() == pytest.approx((block_a + block_b) / 2)
    # the same with the LN'd targets (eps makes them a hair smaller than 1)
    assert BootlegLoss([2, 5], kind)(prediction, targets)["loss"].item() == pytest.approx((block_a + block_b) / 2, rel=1e-4)


def test_unknown_loss_names_the_key():
    with pytest.raises(ValueError, match="'bootleg.loss' must be one of smooth_l1, mse, l1"):
        BootlegLoss([0], "huber")


def test_loss_has_no_state():
    assert BootlegLoss([0, 1]).state_dict() == {}
    assert math.isclose(BootlegLoss([0])(torch.zeros(1, 1, 2), torch.ones(1, 1, 2))["loss"].item(), 0.5)
