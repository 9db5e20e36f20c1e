import math

import pytest
import torch
from PIL import Image

from udi.eval.attnstats import attention_statistics, collect_attention_stats, plot_attention_stats
from udi.models.vit import build_vit


def test_uniform_attention_has_maximal_entropy():
    B, H, n_cls, N = 2, 3, 2, 16
    T = n_cls + N
    stats = attention_statistics(torch.full((B, H, T, T), 1.0 / T), n_cls)
    for key in ("cls_entropy", "patch_entropy"):
        assert stats[key].shape == (B,)
        torch.testing.assert_close(stats[key], torch.full((B,), math.log(N)))
    torch.testing.assert_close(stats["cls_to_cls"], torch.full((B,), n_cls / T))


def test_one_hot_cls_attention_has_zero_entropy():
    n_cls, N = 1, 9
    T = n_cls + N
    attn = torch.full((1, 2, T, T), 1.0 / T)
    attn[:, :, 0] = 0.0
    attn[:, :, 0, n_cls + 4] = 1.0  # [cls] looks at patch 4 only
    stats = attention_statistics(attn, n_cls)
    torch.testing.assert_close(stats["cls_entropy"], torch.zeros(1))
    torch.testing.assert_close(stats["cls_to_cls"], torch.zeros(1))


def test_entropy_is_renormalised_without_class_tokens():
    # Half the [cls] mass on the class tokens, the rest split evenly over 2 of 4 patches:
    # renormalised, the patch distribution is (1/2, 1/2, 0, 0) with entropy log 2.
    n_cls, N = 2, 4
    row = torch.tensor([0.3, 0.2, 0.25, 0.25, 0.0, 0.0])
    attn = torch.full((1, 1, 6, 6), 1.0 / 6)
    attn[0, 0, 0] = row
    attn[0, 0, 3] = row  # patch 1 attends like [cls]: its renormalised entropy is log 2
    stats = attention_statistics(attn, n_cls)
    torch.testing.assert_close(stats["cls_entropy"], torch.tensor([math.log(2)]))
    torch.testing.assert_close(stats["cls_to_cls"], torch.tensor([0.5]))
    expected_patch = (3 * math.log(N) + math.log(2)) / N
    torch.testing.assert_close(stats["patch_entropy"], torch.tensor([expected_patch]))


def test_per_image_and_head_averaging():
    n_cls, N = 1, 4
    T = n_cls + N
    attn = torch.full((2, 2, T, T), 1.0 / T)
    attn[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])  # image 0, head 0: entropy 0
    stats = attention_statistics(attn, n_cls)
    torch.testing.assert_close(stats["cls_entropy"], torch.tensor([math.log(N) / 2, math.log(N)]))


def test_collect_on_tiny_vit_and_plots(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=2)
    batches = [torch.randn(3, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    stats = collect_attention_stats(vit, iter(batches), progress=False)
    N = 16
    assert stats["num_images"] == 5
    assert stats["max_entropy"] == pytest.approx(math.log(N))
    assert [b["block"] for b in stats["blocks"]] == list(range(vit.depth))
    for b in stats["blocks"]:
        assert 0.0 <= b["cls_entropy"] <= math.log(N) + 1e-5
        assert 0.0 <= b["patch_entropy"] <= math.log(N) + 1e-5
        assert 0.0 <= b["cls_to_cls"] <= 1.0

    # Same numbers as averaging attention_statistics by hand over the images.
    with torch.no_grad():
        attns = vit.get_attention(torch.cat(batches), indices=range(vit.depth))
    for b, attn in zip(stats["blocks"], attns):
        ref = attention_statistics(attn, vit.n_cls)
        for key in ("cls_entropy", "cls_to_cls", "patch_entropy"):
            assert b[key] == pytest.approx(ref[key].mean().item(), rel=1e-5)

    paths = plot_attention_stats(stats, tmp_path / "plots")
    names = ["attn_cls_entropy.png", "attn_cls_to_cls.png", "attn_patch_entropy.png"]
    assert [p.name for p in paths] == names
    for p in paths:
        assert p.stat().st_size > 0
        with Image.open(p) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 0


def test_collect_rejects_mixed_resolutions_and_empty_input():
    vit = build_vit("vit_nano", patch_size=4, img_size=16, n_cls=1)
    with pytest.raises(ValueError):
        collect_attention_stats(vit, [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 8)], progress=False)
    with pytest.raises(ValueError):
        collect_attention_stats(vit, [], progress=False)
