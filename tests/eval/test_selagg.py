import torch
import torch.nn as nn
import torch.nn.functional as F

from udi.eval.linear import LinearConfig, train_linear_on_features
from udi.eval.selagg import SelAggConfig, SelectiveAggregation, train_selective_aggregation

C, P, D = 4, 16, 16


def one_informative_token(n: int, g: torch.Generator):
    """Bags of P tokens where only one token (random position, marked by dim 0 = 4) carries
    the class (3 x one-hot in dims 1..C); every other token carries a random distractor class.
    Returns tokens (n, P, D), labels (n,), informative positions (n,)."""
    y = torch.randint(0, C, (n,), generator=g)
    tokens = torch.randn(n, P, D, generator=g)
    tokens[..., 1 : C + 1] += 3 * F.one_hot(torch.randint(0, C, (n, P), generator=g), C)
    pos = torch.randint(0, P, (n,), generator=g)
    rows = torch.arange(n)
    tokens[rows, pos, 1 : C + 1] = 3 * F.one_hot(y, C).float()
    tokens[rows, pos, 0] = 4.0
    return tokens, y, pos


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return one_informative_token(768, g), one_informative_token(384, g)


CFG = SelAggConfig(epochs=15, lr=0.1, batch_size=64)


def test_shapes_weights_and_batchnorm_without_affine():
    for hidden in (None, 8):
        model = SelectiveAggregation(D, C, hidden_dim=hidden)
        logits, weights = model(torch.randn(5, P, D))
        assert logits.shape == (5, C) and weights.shape == (5, P)
        assert torch.allclose(weights.sum(1), torch.ones(5))
        assert isinstance(model.norm, nn.BatchNorm1d) and not model.norm.affine
        assert model.norm.weight is None and model.norm.bias is None
        # w starts at zero: the pooling starts as the mean over the tokens.
        assert torch.allclose(weights, torch.full((5, P), 1 / P))
    assert isinstance(SelectiveAggregation(D, C, hidden_dim=8).score[1], nn.Tanh)


def test_selagg_finds_the_informative_token_where_the_mean_token_fails():
    (tr, ytr, _), (va, yva, pva) = data()
    model = SelectiveAggregation(D, C)
    result = train_selective_aggregation(tr, ytr, va, yva, C, CFG, progress=False, model=model)
    assert set(result) == {"selagg_top1_best", "selagg_top1_final"}
    assert result["selagg_top1_final"] >= 95.0
    assert result["selagg_top1_best"] >= result["selagg_top1_final"]

    model.eval()
    with torch.no_grad():
        _, weights = model(va)
    # Uniform attention would give 1 / P = 0.06 to the informative token.
    assert weights[torch.arange(len(va)), pva].mean() > 0.8
    assert (weights.argmax(dim=1) == pva).float().mean() > 0.95

    # The class signal is 1 token in 16 among distractors: averaging drowns it.
    mean_probe = train_linear_on_features(
        tr.mean(1), ytr, va.mean(1), yva, C, LinearConfig(epochs=15, lr=0.1, batch_size=64), progress=False
    )
    assert mean_probe["linear_top1_best"] < result["selagg_top1_best"] - 40


def test_hidden_variant_and_float16_tokens():
    (tr, ytr, _), (va, yva, _) = data(1)
    cfg = SelAggConfig(epochs=15, lr=0.1, batch_size=64, hidden_dim=16)
    result = train_selective_aggregation(tr.half(), ytr, va.half(), yva, C, cfg, progress=False)
    assert result["selagg_top1_final"] >= 95.0


def test_deterministic_with_a_seed_and_global_rng_untouched():
    (tr, ytr, _), (va, yva, _) = data(2)
    cfg = SelAggConfig(epochs=2, lr=0.1, batch_size=64, hidden_dim=8, seed=3)
    state = torch.get_rng_state()
    a = train_selective_aggregation(tr, ytr, va, yva, C, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_selective_aggregation(tr, ytr, va, yva, C, cfg, progress=False)
    assert a == b


def test_random_labels_stay_near_chance():
    g = torch.Generator().manual_seed(4)
    tr, va = torch.randn(512, P, D, generator=g), torch.randn(512, P, D, generator=g)
    ytr, yva = torch.randint(0, C, (512,), generator=g), torch.randint(0, C, (512,), generator=g)
    result = train_selective_aggregation(tr, ytr, va, yva, C, SelAggConfig(epochs=5, lr=0.1, batch_size=64),
                                         progress=False)
    assert result["selagg_top1_final"] < 35.0
