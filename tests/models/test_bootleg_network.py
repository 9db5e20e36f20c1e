"""Bootleg's predictor and networks (udi.models.predictor, udi.models.bootleg_network, built by udi.methods.bootleg)."""
import pytest
import torch

from udi.config import ConfigError, load_config
from udi.methods import build_network
from udi.methods.bootleg import BootlegMethod
from udi.models.bootleg_network import BootlegNetwork
from udi.models.predictor import Predictor, sincos_pos_embed

BASE = ["method=bootleg", "data.name=scenes", "model.arch=vit_nano", "model.patch_size=8",
        "views.global_size=32", "views.local_size=16", "bootleg.min_context=2", "bootleg.predictor_depth=2"]


def student(*extra) -> BootlegNetwork:
    torch.manual_seed(0)
    return build_network(load_config(None, BASE + list(extra))).eval()


def indices():
    context = torch.tensor([[0, 1, 2, 3, 8], [4, 5, 6, 12, 13]])  # (B=2, Nc=5)
    targets = torch.tensor([[[10, 11], [14, 15]], [[8, 9], [2, 3]]])  # (B=2, n_t=2, K=2)
    return context, targets


def test_sincos_embeddings():
    pos = sincos_pos_embed(4, 8)
    assert pos.shape == (16, 8)
    assert len({tuple(row.tolist()) for row in pos}) == 16  # every patch distinct
    assert torch.equal(pos[1, :4], pos[2, :4]) and torch.equal(pos[1, 4:], pos[5, 4:])  # row | column halves
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed(4, 6)


def test_build_from_config_defaults():
    net = student()
    assert isinstance(net, BootlegNetwork) and net.backbone.n_cls == 1
    assert net.target_layers == [0, 1, 2, 3]  # "auto" on 4 blocks
    assert net.predictor.dim == 48 and len(net.predictor.blocks) == 2  # half of 96
    assert net.predictor.proj.out_features == 4 * 96
    assert student("bootleg.target_layers=[3, 1]", "bootleg.predictor_dim=24").predictor.proj.out_features == 2 * 96


@pytest.mark.parametrize("override, message", [
    ("bootleg.target_layers=[4]", r"'bootleg.target_layers' .* \[0, 3\]"),
    ("bootleg.predictor_dim=50", "'bootleg.predictor_dim' \\(50\\) must be a multiple of 4"),
])
def test_bad_network_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        student(override)


def test_prediction_shape_and_blocks_are_predicted_independently():
    net = student()
    images = torch.randn(2, 3, 32, 32)
    context, targets = indices()
    with torch.no_grad():
        out = net(images, context, targets)
        other = targets.clone()
        other[:, 1] = torch.tensor([[0, 5], [7, 11]])  # change block 1 only
        out_other = net(images, context, other)
    assert out.shape == (2 * 2, 2, 4 * 96)  # (n_t * B, K, L * D), block-major
    torch.testing.assert_close(out[:2], out_other[:2])  # block 0 of both images: unchanged
    assert not torch.allclose(out[2:], out_other[2:])


def test_student_encoder_sees_only_the_context_patches():
    net = student()
    context, targets = indices()
    lengths = []
    net.backbone.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(images, context, targets)
        # Change every pixel outside the context patches: nothing may change.
        changed = torch.randn(2, 3, 32, 32)
        for b in range(2):
            for patch in context[b].tolist():
                r, c = divmod(patch, 4)
                changed[b, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = images[b, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8]
        out_changed = net(changed, context, targets)
    assert lengths == [1 + 5, 1 + 5]  # [cls] + 5 context tokens, no mask token in the encoder
    torch.testing.assert_close(out, out_changed)


def test_teacher_is_the_encoder_alone_frozen():
    net = student()
    teacher = net.make_teacher()
    assert teacher.predictor is None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert set(teacher.state_dict()) == {f"backbone.{k}" for k in net.backbone.state_dict()}
    hidden = teacher.teacher_hidden(torch.randn(3, 3, 32, 32))
    assert [h.shape for h in hidden] == [torch.Size([3, 16, 96])] * 4
    with pytest.raises(RuntimeError, match="teacher"):
        teacher(torch.randn(1, 3, 32, 32), *indices())


def test_predictor_gradients_reach_the_mask_token_and_encoder():
    net = student().train()
    context, targets = indices()
    net(torch.randn(2, 3, 32, 32), context, targets).square().mean().backward()
    assert net.predictor.mask_token.grad.abs().sum() > 0
    assert net.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert net.backbone.cls_token.grad is not None  # it takes part in the encoder's attention


def test_predictor_standalone_shapes():
    predictor = Predictor(embed_dim=16, out_dim=32, grid=3, depth=1, dim=8, num_heads=2)
    out = predictor(torch.randn(2, 4, 16), torch.tensor([[0, 1, 2, 3]] * 2), torch.tensor([[[4, 5]], [[7, 8]]]))
    assert out.shape == (2, 2, 32)
    assert "pos_embed" not in predictor.state_dict()  # a function of (grid, dim), not saved


def test_bootleg_student_is_build_network():
    cfg = load_config(None, BASE)
    torch.manual_seed(1)
    a = build_network(cfg)
    torch.manual_seed(1)
    b = BootlegMethod(cfg).build_student()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
