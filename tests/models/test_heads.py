import pytest
import torch
import torch.nn.functional as F

from udi.models import DINOHead


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_output_shape():
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    assert head(torch.randn(2, 5, 32)).shape == (2, 5, 100)
    assert head(torch.randn(7, 32)).shape == (7, 100)


def test_state_dict_keys_match_dino():
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    sd = head.state_dict()
    assert list(sd) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                        "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"]
    assert sd["last_layer.weight_g"].shape == (100, 1)
    assert sd["last_layer.weight_v"].shape == (100, 16)
    assert set(DINOHead(32, 10, nlayers=1, bottleneck_dim=16).state_dict()) == {
        "mlp.weight", "mlp.bias", "last_layer.weight_g", "last_layer.weight_v"}
    assert len(DINOHead(32, 10, nlayers=4, hidden_dim=8, bottleneck_dim=4).mlp) == 7


def test_last_layer_weight_is_normalised_v():
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    assert (head.last_layer.weight_g == 1).all()
    v = head.last_layer.weight_v
    torch.testing.assert_close(head.last_layer.weight, v / v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(100))


def test_forward_matches_manual_computation():
    head = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16)
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(4, 32)
    m = head.mlp
    h = m[4](F.gelu(m[2](F.gelu(m[0](x)))))
    h = h / h.norm(dim=-1, keepdim=True)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    torch.testing.assert_close(head(x), h @ (g * v / v.norm(dim=1, keepdim=True)).T)


def test_last_layer_invariant_to_row_scale_of_v():
    head = DINOHead(32, 20, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(3, 32)
    before = head(x)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(torch.rand(20, 1) * 5 + 0.1)
    torch.testing.assert_close(head(x), before)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_weight_g_frozen_only_when_norm_last_layer(norm_last_layer):
    head = DINOHead(32, 20, hidden_dim=64, bottleneck_dim=16, norm_last_layer=norm_last_layer)
    assert head.last_layer.weight_g.requires_grad is (not norm_last_layer)
    head(torch.randn(3, 32)).sum().backward()
    assert head.last_layer.weight_v.grad is not None
    assert head.mlp[0].weight.grad is not None
    assert (head.last_layer.weight_g.grad is None) is norm_last_layer


def test_init():
    head = DINOHead(64, 20, hidden_dim=512, bottleneck_dim=256)
    for i in (0, 2, 4):
        assert (head.mlp[i].bias == 0).all()
        assert 0.015 < head.mlp[i].weight.std().item() < 0.025


def test_bad_nlayers():
    with pytest.raises(ValueError):
        DINOHead(8, 8, nlayers=0)
