import json

import pytest
import torch

from udi.models import ARCH_PRESETS, VisionTransformer, build_vit, vit_from_config
from udi.models.vit import Attention, DropPath


def small_vit(**kw):
    cfg = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2)
    cfg.update(kw)
    return VisionTransformer(**cfg).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("n_cls", [1, 2])
@pytest.mark.parametrize("hw", [(32, 32), (16, 16), (32, 16), (8, 24)])
def test_shapes_for_crop_sizes(n_cls, hw):
    model = small_vit(n_cls=n_cls)
    x = torch.randn(2, 3, *hw)
    n = (hw[0] // 4) * (hw[1] // 4)
    assert model.prepare_tokens(x).shape == (2, n_cls + n, 32)
    assert model.forward_blocks(x).shape == (2, n_cls + n, 32)
    assert model.forward_features(x).shape == (2, n_cls + n, 32)
    assert model(x).shape == (2, n_cls, 32)


def test_forward_is_normed_class_tokens():
    model = small_vit(n_cls=2)
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    torch.testing.assert_close(model(x), feats[:, :2])
    torch.testing.assert_close(feats, model.norm(model.forward_blocks(x)))


def test_pos_embed_224_model_at_96px():
    model = build_vit("vit_nano", patch_size=16, img_size=224, depth=1).eval()
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 96)
    x = torch.randn(1, 3, 96, 96)
    assert model.forward_features(x).shape == (1, 1 + 36, 96)
    pos = model.interpolate_pos_encoding(6, 6)
    assert pos.shape == (1, 1 + 36, 96)
    torch.testing.assert_close(pos[:, :1], model.pos_embed[:, :1])


def test_pos_embed_not_interpolated_on_native_grid():
    model = small_vit(n_cls=2)
    assert model.interpolate_pos_encoding(8, 8) is model.pos_embed


def test_pos_embed_interpolation_keeps_class_slots_and_constants():
    model = small_vit(n_cls=2)
    with torch.no_grad():
        model.pos_embed[:, 2:] = 0.5  # bicubic interpolation of a constant is that constant
    pos = model.interpolate_pos_encoding(4, 6)
    assert pos.shape == (1, 2 + 24, 32)
    torch.testing.assert_close(pos[:, :2], model.pos_embed[:, :2])
    torch.testing.assert_close(pos[:, 2:], torch.full_like(pos[:, 2:], 0.5))


def test_bad_input_size_raises():
    with pytest.raises(ValueError):
        small_vit()(torch.randn(1, 3, 30, 32))


def test_state_dict_keys_match_dino_timm_layout():
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias"}
    for i in range(2):
        for name in ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]:
            expected |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    sd = model.state_dict()
    assert set(sd) == expected
    assert sd["cls_token"].shape == (1, 1, 32)
    assert sd["pos_embed"].shape == (1, 1 + 64, 32)
    assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (128, 32)


def test_init():
    model = small_vit()
    assert all((b.attn.qkv.bias == 0).all() and (b.mlp.fc2.bias == 0).all() for b in model.blocks)
    assert (model.norm.weight == 1).all() and (model.norm.bias == 0).all()
    assert model.norm.eps == 1e-6
    std = model.blocks[0].mlp.fc1.weight.std().item()
    assert 0.015 < std < 0.025
    assert 0.01 < model.pos_embed.std().item() < 0.03


def test_fused_and_explicit_attention_agree():
    attn = Attention(32, num_heads=4)
    x = torch.randn(2, 7, 32)
    out_explicit, weights = attn(x, return_attention=True)
    torch.testing.assert_close(attn(x), out_explicit, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 4, 7, 7)


def test_get_attention():
    model = small_vit(n_cls=2)
    x = torch.randn(2, 3, 16, 20)
    (last,) = model.get_attention(x)
    assert last.shape == (2, 2, 2 + 20, 2 + 20)
    torch.testing.assert_close(last.sum(-1), torch.ones(2, 2, 22))
    assert (last >= 0).all()
    first, last_again = model.get_attention(x, [0, -1])
    torch.testing.assert_close(last_again, last)
    # Recompute block 0's attention by hand from the prepared tokens.
    _, ref = model.blocks[0].attn(model.blocks[0].norm1(model.prepare_tokens(x)), return_attention=True)
    torch.testing.assert_close(first, ref)


def test_forward_intermediates_matches_manual_loop():
    model = small_vit(n_cls=2)
    x = torch.randn(2, 3, 32, 32)
    h, states = model.prepare_tokens(x), []
    for blk in model.blocks:
        h = blk(h)
        states.append(h)
    out = model.forward_intermediates(x, [0, 2, 1])
    for o, i in zip(out, [0, 2, 1]):
        torch.testing.assert_close(o, states[i])
    neg = model.forward_intermediates(x, [-1, -3])
    torch.testing.assert_close(neg[0], states[2])
    torch.testing.assert_close(neg[1], states[0])
    (normed,) = model.forward_intermediates(x, [-1], norm=True)
    torch.testing.assert_close(normed, model.forward_features(x))
    with pytest.raises(IndexError):
        model.forward_intermediates(x, [3])
    with pytest.raises(IndexError):
        model.forward_intermediates(x, [-4])


def test_forward_intermediates_stops_early():
    model = small_vit()
    calls = []
    model.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    model.forward_intermediates(torch.randn(1, 3, 16, 16), [0, -2])
    assert calls == []


def test_drop_path_rates_increase_linearly():
    model = small_vit(drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_drop_path_identity_in_eval_and_stochastic_in_train():
    model = small_vit(drop_path_rate=0.5)
    ref = small_vit(drop_path_rate=0.0)
    ref.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(x), ref(x))
    ref.train()
    torch.testing.assert_close(ref(x), model(x))  # no drop path: train == eval
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_drop_path_is_per_sample():
    dp = DropPath(0.25).train()
    y = dp(torch.ones(4000, 3, 5))
    per_sample = y[:, 0, 0]
    assert (y == per_sample[:, None, None]).all()
    kept = per_sample != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert abs(per_sample.mean().item() - 1.0) < 0.05


def test_keep_equals_running_on_gathered_tokens():
    model = small_vit(n_cls=2)
    x = torch.randn(2, 3, 16, 16)  # 16 patches
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(2)])
    tokens = model.prepare_tokens(x)
    gathered = torch.cat(
        [tokens[:, :2], torch.stack([tokens[b, 2 + keep[b]] for b in range(2)])], dim=1)
    h = gathered
    for blk in model.blocks:
        h = blk(h)
    out = model.forward_features(x, keep=keep)
    assert out.shape == (2, 2 + 5, 32)
    torch.testing.assert_close(out, model.norm(h))
    torch.testing.assert_close(model.forward_blocks(x, keep=keep), h)
    torch.testing.assert_close(model.forward_intermediates(x, [-1], keep=keep)[0], h)


def test_keep_all_patches_is_a_permutation():
    model = small_vit()
    x = torch.randn(1, 3, 16, 16)
    perm = torch.randperm(16)
    full = model.forward_features(x)
    permuted = model.forward_features(x, keep=perm[None])
    torch.testing.assert_close(permuted[:, 1:], full[:, 1 + perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted[:, :1], full[:, :1], atol=1e-5, rtol=1e-5)


def test_arch_config_round_trip():
    model = build_vit("vit_nano", patch_size=8, img_size=64, n_cls=2, drop_path_rate=0.1, depth=2)
    cfg = json.loads(json.dumps(model.arch_config()))
    clone = vit_from_config(cfg)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()}
    assert clone.arch_config() == model.arch_config()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))


@pytest.mark.parametrize("arch", sorted(ARCH_PRESETS))
def test_presets(arch):
    model = build_vit(arch, depth=1)  # depth override keeps the test fast
    preset = ARCH_PRESETS[arch]
    assert (model.embed_dim, model.num_heads) == (preset["embed_dim"], preset["num_heads"])
    assert model.depth == 1 and len(model.blocks) == 1


def test_preset_sizes():
    assert {k: (v["embed_dim"], v["num_heads"], v["depth"]) for k, v in ARCH_PRESETS.items()} == {
        "vit_tiny": (192, 3, 12), "vit_small": (384, 6, 12), "vit_base": (768, 12, 12),
        "vit_nano": (96, 3, 4), "vit_micro": (192, 3, 6)}


def test_build_vit_errors():
    with pytest.raises(ValueError, match="vit_small"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match="unknown overrides"):
        build_vit("vit_nano", embed_dimension=64)
    with pytest.raises(ValueError):
        build_vit("vit_nano", embed_dim=100, num_heads=3)  # not divisible
    with pytest.raises(ValueError):
        build_vit("vit_nano", img_size=100, patch_size=16)


def test_build_vit_overrides():
    model = build_vit("vit_nano", patch_size=4, img_size=32, n_cls=2, embed_dim=48, depth=2,
                      num_heads=4, mlp_ratio=2.0)
    assert model.blocks[0].mlp.fc1.out_features == 96
    assert model.arch_config()["n_cls"] == 2 and model.patch_size == 4 and model.img_size == 32


def test_gradients_reach_all_parameters():
    model = small_vit(n_cls=2).train()
    # A random projection: the plain sum of LayerNorm outputs has no gradient.
    (model(torch.randn(2, 3, 16, 16)) * torch.randn(2, 2, 32)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_conv_stem_shapes_and_widths():
    model = small_vit(patch_size=8, embed_dim=32, stem="conv")
    convs = [m for m in model.patch_embed.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32] and all(c.stride == (2, 2) for c in convs)
    assert model.patch_embed(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)  # a 4 x 4 grid, as patch 8
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 16, 32)
    # Other crop sizes: the stem's grid follows the input, the positional embeddings are resized.
    assert model.forward_features(torch.randn(2, 3, 16, 48)).shape == (2, 1 + 2 * 6, 32)
    assert small_vit(stem="patch").patch_embed.__class__.__name__ == "PatchEmbed"


def test_conv_stem_changes_only_the_patch_embedding():
    conv, patch = small_vit(patch_size=8, stem="conv"), small_vit(patch_size=8)
    conv_keys, patch_keys = set(conv.state_dict()), set(patch.state_dict())
    assert conv_keys - patch_keys == {k for k in conv_keys if k.startswith("patch_embed.stem.")}
    assert patch_keys - conv_keys == set()  # patch_embed.proj is the stem's 1x1 projection
    assert conv.state_dict()["patch_embed.proj.weight"].shape == (32, 32, 1, 1)


def test_conv_stem_round_trips_through_arch_config():
    model = small_vit(patch_size=4, stem="conv")
    config = json.loads(json.dumps(model.arch_config()))
    assert config["stem"] == "conv" and "stem" not in small_vit().arch_config()  # patch files stay as before
    rebuilt = vit_from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(ValueError, match=r"unknown architecture field\(s\) \['stem_width'\]"):
        vit_from_config({**config, "stem_width": 3})


@pytest.mark.parametrize("patch, message", [(6, "power of 2"), (1, "power of 2")])
def test_conv_stem_needs_a_power_of_two_patch(patch, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(img_size=36 if patch == 6 else 32, patch_size=patch, embed_dim=32, depth=1, num_heads=2,
                          stem="conv")
    with pytest.raises(ValueError, match="stem must be one of"):
        small_vit(stem="convnext")


def dino_interpolate_pos_encoding(pos_embed, patch_size, H, W):
    """DINO's vision_transformer.py interpolate_pos_encoding, restated (its w, h are the input's
    dims 2 and 3: `B, nc, w, h = x.shape`)."""
    import math

    N = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = H // patch_size + 0.1, W // patch_size + 0.1
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("H, W", [(160, 160), (96, 96), (128, 192), (288, 224)])
def test_pos_interp_dino_equals_dinos_formula(H, W):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=1, num_heads=3, pos_interp="dino")
    expected = dino_interpolate_pos_encoding(model.pos_embed, 16, H, W)
    assert torch.allclose(model.interpolate_pos_encoding(H // 16, W // 16), expected, atol=1e-6)


def test_pos_interp_conventions_differ_off_the_native_grid_only():
    torch.manual_seed(0)
    models = {name: VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=1, num_heads=3, pos_interp=name)
              for name in ("bicubic", "dino", "timm")}
    state = models["bicubic"].state_dict()
    for model in models.values():
        model.load_state_dict(state)
    native = {n: m.interpolate_pos_encoding(14, 14) for n, m in models.items()}
    assert torch.equal(native["bicubic"], native["dino"]) and torch.equal(native["bicubic"], native["timm"])
    small = {n: m.interpolate_pos_encoding(10, 10) for n, m in models.items()}  # 160 px: shrinking
    assert (small["bicubic"] - small["dino"]).abs().max() > 1e-3
    assert (small["bicubic"] - small["timm"]).abs().max() > 1e-3
    large = {n: m.interpolate_pos_encoding(18, 18) for n, m in models.items()}
    assert (large["bicubic"] - large["timm"]).abs().max() > 1e-4  # antialiased bicubic: another kernel


def test_pos_interp_is_recorded_and_can_be_replaced_at_load(tmp_path):
    from udi.io.checkpoint import export_backbone
    from udi.models.pretrained import load_backbone

    model = build_vit("vit_nano", patch_size=4, img_size=16, pos_interp="dino")
    assert model.arch_config()["pos_interp"] == "dino" and "pos_interp" not in build_vit("vit_nano").arch_config()
    export_backbone(tmp_path / "b.safetensors", model)
    assert load_backbone(tmp_path / "b.safetensors").pos_interp == "dino"
    assert load_backbone(tmp_path / "b.safetensors", pos_interp="timm").pos_interp == "timm"
    with pytest.raises(ValueError, match="pos_interp must be one of"):
        load_backbone(tmp_path / "b.safetensors", pos_interp="area")
    with pytest.raises(ValueError, match="pos_interp must be one of"):
        VisionTransformer(pos_interp="nearest")
