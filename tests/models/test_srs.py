import pytest
import torch
import torch.nn.functional as F

from udi.models import SRSModule


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_srs(m: SRSModule, x, w):
    """Direct per-head implementation of the SRS formula."""
    B, N, D = x.shape
    H, d = m.num_heads, D // m.num_heads
    X = F.layer_norm(x, (D,), m.norm_in.weight, m.norm_in.bias, 1e-6)
    Q = w @ (X @ m.q.weight.T + m.q.bias)
    KV = X @ m.kv.weight.T + m.kv.bias
    K, V = KV[..., :D], KV[..., D:]
    heads, attns = [], []
    for h in range(H):
        s = slice(h * d, (h + 1) * d)
        a = torch.softmax(Q[..., s] @ K[..., s].transpose(1, 2) / d**0.5, dim=-1)
        attns.append(a)
        heads.append(a @ V[..., s])
    Z = torch.cat(heads, dim=-1) @ m.proj.weight.T + m.proj.bias
    out = F.layer_norm(Z + w @ X, (D,), m.norm_out.weight, m.norm_out.bias, 1e-6)
    return out, torch.stack(attns, dim=1)


def random_weights(B, S, N):
    w = torch.rand(B, S, N)
    return w / w.sum(-1, keepdim=True)


def test_hand_computed_identity_case():
    m = SRSModule(4, num_heads=1)
    with torch.no_grad():
        for lin in (m.q, m.proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
        m.kv.weight.copy_(torch.cat([torch.eye(4), torch.eye(4)]))
        m.kv.bias.zero_()
    x = torch.randn(1, 3, 4)
    w = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]])
    X = F.layer_norm(x, (4,), eps=1e-6)
    Q = w @ X
    Z = torch.softmax(Q @ X.transpose(1, 2) / 2.0, dim=-1) @ X
    expected = F.layer_norm(Z + Q, (4,), eps=1e-6)
    torch.testing.assert_close(m(x, w), expected)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_matches_reference(num_heads):
    m = SRSModule(16, num_heads)
    with torch.no_grad():  # non-trivial norms and biases
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, w = torch.randn(2, 9, 16), random_weights(2, 5, 9)
    ref_out, ref_attn = reference_srs(m, x, w)
    torch.testing.assert_close(m(x, w), ref_out, atol=1e-5, rtol=1e-5)
    out, attn = m(x, w, return_attention=True)
    assert attn.shape == (2, num_heads, 5, 9)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn, ref_attn, atol=1e-6, rtol=1e-5)


def zero_proj(m):
    with torch.no_grad():
        m.proj.weight.zero_()
        m.proj.bias.zero_()


def test_one_hot_reads_selected_token():
    m = SRSModule(8, 2)
    zero_proj(m)  # leaves only the skip connection: out = norm_out(weights @ X)
    x = torch.randn(2, 6, 8)
    sel = torch.tensor([[4, 0, 5], [1, 1, 3]])
    w = F.one_hot(sel, 6).float()
    expected = m.norm_out(m.norm_in(x)[torch.arange(2)[:, None], sel])
    torch.testing.assert_close(m(x, w), expected)
    # The query is the selected token's query: same attention as q(X)[sel] against all keys.
    _, attn = m(x, w, return_attention=True)
    X = m.norm_in(x)
    q = m.q(X)[torch.arange(2)[:, None], sel].reshape(2, 3, 2, 4).transpose(1, 2)
    k = m.kv(X)[..., :8].reshape(2, 6, 2, 4).transpose(1, 2)
    torch.testing.assert_close(attn, torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1))


def test_bilinear_weights_interpolate():
    m = SRSModule(8, 2)
    zero_proj(m)
    x = torch.randn(1, 6, 8)
    w = torch.zeros(1, 3, 6)
    w[0, 0, 2] = w[0, 1, 5] = 1.0
    w[0, 2, 2], w[0, 2, 5] = 0.25, 0.75
    out, attn = m(x, w, return_attention=True)
    X = m.norm_in(x)
    torch.testing.assert_close(out[0, 2], m.norm_out(0.25 * X[0, 2] + 0.75 * X[0, 5]))
    # Attention logits are linear in the query, so the mixed row's log-attention equals
    # the weighted log-attentions of the two corners up to a per-row constant.
    la = attn.log()
    diff = la[0, :, 2] - (0.25 * la[0, :, 0] + 0.75 * la[0, :, 1])
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), atol=1e-5, rtol=1e-5)


def test_zero_rows_are_finite():
    m = SRSModule(8, 2)
    x = torch.randn(2, 6, 8, requires_grad=True)
    w = random_weights(2, 4, 6)
    w[0, 1] = 0
    w[1] = 0
    out, attn = m(x, w, return_attention=True)
    assert torch.isfinite(out).all() and torch.isfinite(attn).all()
    torch.testing.assert_close(m(x, w), out, atol=1e-5, rtol=1e-5)
    valid = w.sum(-1) > 0
    out[valid].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gradient_flows():
    m = SRSModule(8, 2)
    x = torch.randn(2, 6, 8, requires_grad=True)
    w = random_weights(2, 4, 6)
    (m(x, w) * torch.randn(2, 4, 8)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_keys_and_errors():
    m = SRSModule(8, 2)
    assert {k.rsplit(".", 1)[0] for k in m.state_dict()} == {"norm_in", "q", "kv", "proj", "norm_out"}
    assert m.kv.weight.shape == (16, 8)
    with pytest.raises(ValueError):
        m(torch.randn(1, 6, 8), torch.rand(1, 3, 5))
    with pytest.raises(ValueError):
        SRSModule(10, 3)
