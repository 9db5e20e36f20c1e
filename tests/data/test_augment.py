"""Tests of batched cropping, the evaluation box, normalisation and the photometric recipe."""
import pytest
import torch

from udi.config import DEFAULTS
from udi.data.augment import (
    IMAGENET_MEAN, IMAGENET_STD, Photometric, center_box, crop_resize, normalize, photometric_from_config,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- crop_resize --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
def test_crop_resize_identity_and_flip(mode):
    images = torch.rand(3, 3, 20, 20, generator=gen())
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(3, 4)
    out = crop_resize(images, full, 20, mode)
    assert out.shape == (3, 3, 20, 20) and out.dtype == torch.float32
    assert torch.allclose(out, images, atol=1e-5)
    flipped = crop_resize(images, full[:, [2, 1, 0, 3]], 20, mode)
    assert torch.allclose(flipped, images.flip(-1), atol=1e-5)


def test_crop_resize_sub_box_and_uint8():
    images = torch.randint(0, 256, (2, 3, 21, 21), dtype=torch.uint8, generator=gen())
    # Pixel centres 0..10 of 0..20 on each axis: exactly the top-left 11 x 11 pixels.
    out = crop_resize(images, torch.tensor([[0.0, 0.0, 0.5, 0.5]]).expand(2, 4), 11)
    assert out.dtype == torch.float32
    assert torch.allclose(out, images[:, :, :11, :11].float() / 255, atol=1e-5)
    # Different boxes per image, output size differs from the canvas, values stay in [0, 1].
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.9, 0.0, 0.3, 0.4]])
    out = crop_resize(images, boxes, 8)
    assert out.shape == (2, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        crop_resize(images, boxes, 1)


def test_center_box_square_and_centred():
    aspect = torch.tensor([2.0, 0.5, 1.0, 4 / 3])
    box = center_box(aspect, 0.875)
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert torch.allclose(w * aspect, h)  # square in original pixels (image is aspect x 1)
    assert torch.allclose((box[:, :2] + box[:, 2:]) / 2, torch.full((4, 2), 0.5))
    assert torch.allclose(h, 0.875 * aspect.clamp(max=1.0))  # side is 87.5% of the shorter image side


def test_normalize():
    x = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(normalize(x), torch.zeros(2, 3, 4, 4), atol=1e-6)
    ones = normalize(torch.ones(1, 3, 1, 1)).flatten()
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(ones, expected)


# --- Photometric --------------------------------------------------------------------------


def test_photometric_shapes_range_determinism():
    x = torch.rand(64, 3, 16, 16, generator=gen())
    aug = Photometric()
    a, b = aug(x, gen(5)), aug(x, gen(5))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, aug(x, gen(6)))
    changed = (a != x).flatten(1).any(1)
    assert 0.5 < changed.float().mean() <= 1.0


def test_photometric_disabled_is_identity():
    x = torch.rand(8, 3, 12, 12, generator=gen())
    g = gen(1)
    assert torch.equal(Photometric(enabled=False)(x, g), x)
    assert torch.equal(g.get_state(), gen(1).get_state())  # draws nothing


def test_photometric_grayscale_rate():
    # No jitter: blur and solarisation keep gray images gray and colour images coloured.
    x = torch.rand(2000, 3, 8, 8, generator=gen())
    out = Photometric(jitter_p=0.0)(x, gen(2))
    gray = ((out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-6) & ((out[:, 1] - out[:, 2]).abs().amax((1, 2)) < 1e-6)
    assert abs(gray.float().mean().item() - 0.2) < 0.03


def test_photometric_grayscale_all_and_solarize_threshold():
    # gray_p=1 makes every sample gray; solarisation (threshold 0.5) leaves dark images alone.
    x = torch.rand(32, 3, 8, 8, generator=gen()) * 0.4
    out = Photometric(jitter_p=0.0, gray_p=1.0, blur_sigma=(1e-3, 1e-3))(x, gen(3))
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    assert out.max() < 0.5


def test_photometric_blur_on_small_images():
    # Kernel never exceeds the image, odd and even sizes alike.
    for side in (5, 6):
        x = torch.rand(16, 3, side, side, generator=gen())
        out = Photometric(jitter_p=0.0, gray_p=0.0, blur_sigma=(2.0, 2.0))(x, gen(4))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.cuda
def test_photometric_same_on_cuda():
    x = torch.rand(16, 3, 16, 16, generator=gen())
    cpu = Photometric()(x, gen(9))
    cuda = Photometric()(x.cuda(), gen(9)).cpu()
    assert torch.allclose(cpu, cuda, atol=1e-4)


def test_photometric_from_config_uses_every_key():
    views = {**DEFAULTS["views"], "color_jitter": [0.1, 0.2, 0.3, 0.5], "color_jitter_p": 0.6,
             "grayscale_p": 0.7, "solarize_p": 0.1, "blur_sigma": [0.2, 0.4], "photometric": False}
    aug = photometric_from_config(views)
    assert aug.jitter == (0.1, 0.2, 0.3, 0.5) and aug.jitter_p == 0.6 and aug.gray_p == 0.7
    assert aug.solarize_p == 0.1 and aug.blur_sigma == (0.2, 0.4) and not aug.enabled
    default = photometric_from_config(DEFAULTS["views"])  # the defaults are DINO's recipe
    assert repr(default) == repr(Photometric())


def test_at_strength_scales_the_colour_recipe_and_keeps_the_draws():
    from udi.data.augment import Photometric

    full = Photometric(jitter=(0.4, 0.4, 0.2, 0.5), jitter_p=1.0, gray_p=0.2, solarize_p=0.2)
    half = full.at_strength(0.5)
    assert half.jitter == (0.2, 0.2, 0.1, 0.25) and (half.jitter_p, half.gray_p, half.solarize_p) == (0.5, 0.1, 0.1)
    assert half.blur_sigma == full.blur_sigma
    x = torch.rand(6, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(full.at_strength(1.0)(x, g1), full(x, g2))  # strength 1 is the recipe itself
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full.at_strength(0.0)(x, g1), full(x, g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # as many draws at any strength: runs stay exact
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        full.at_strength(1.5)


def _reference_photometric(aug: Photometric, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The recipe as first written: every operation on the whole batch, selected per sample with
    a mask, hue with kornia's RGB -> HSV -> RGB (the same draws, in the same order)."""
    import math

    from kornia.color import rgb_to_grayscale
    from kornia.enhance import adjust_hue
    from kornia.filters import gaussian_blur2d

    b = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    def each(mask):
        return mask.view(-1, 1, 1, 1)

    br, co, sa, hu = aug.jitter
    factors = [uniform(1 - br, 1 + br), uniform(1 - co, 1 + co), uniform(1 - sa, 1 + sa), uniform(-hu, hu)]
    order = torch.randperm(4, generator=generator).tolist()
    do_jitter = torch.rand(b, generator=generator) < aug.jitter_p
    do_gray = torch.rand(b, generator=generator) < aug.gray_p
    blur_branch = torch.rand(b, generator=generator) < 0.5
    blur_p = torch.where(torch.rand(b, generator=generator) < 0.5, 1.0, 0.5)
    u_blur = torch.rand(b, generator=generator)
    do_blur = torch.where(blur_branch, u_blur < blur_p, u_blur < 0.1)
    do_solarize = ~blur_branch & (torch.rand(b, generator=generator) < aug.solarize_p)
    sigma = uniform(*aug.blur_sigma)

    def contrast(y, f):  # torchvision's definition: blend with the mean grey level
        mean = rgb_to_grayscale(y).mean(dim=(1, 2, 3), keepdim=True)
        return (each(f) * y + (1 - each(f)) * mean).clamp(0, 1)

    ops = (lambda y, f: (y * each(f)).clamp(0, 1), contrast,
           lambda y, f: (each(f) * y + (1 - each(f)) * rgb_to_grayscale(y)).clamp(0, 1),
           lambda y, f: adjust_hue(y, f * 2 * math.pi).clamp(0, 1))
    y = x
    for i in order:
        y = ops[i](y, factors[i])
    x = torch.where(each(do_jitter), y, x)
    x = torch.where(each(do_gray), rgb_to_grayscale(x).expand_as(x), x)
    k = aug._kernel_size(x.shape[-2], x.shape[-1])
    x = torch.where(each(do_blur), gaussian_blur2d(x, k, sigma[:, None].expand(-1, 2)), x)
    return torch.where(each(do_solarize) & (x >= 0.5), 1.0 - x, x)


@pytest.mark.parametrize("side", [8, 32, 96])
@pytest.mark.parametrize("recipe", [
    {}, {"jitter": (0.4, 0.4, 0.2, 0.5), "jitter_p": 1.0}, {"jitter_p": 0.3, "gray_p": 0.6, "solarize_p": 0.9},
])
def test_photometric_equals_the_whole_batch_formulation(side, recipe):
    # Each op on only the samples that drew it (in chunks) gives, draw for draw, the same images.
    aug = Photometric(**recipe)
    x = torch.rand(37, 3, side, side, generator=gen(side))
    x[0] = 0.5  # a gray image and a saturated one: the hue formula's edge cases
    x[1, 1:] = 0.0
    g1, g2 = gen(11), gen(11)
    out, ref = aug(x, g1), _reference_photometric(aug, x, g2)
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()
    assert torch.equal(g1.get_state(), g2.get_state())
    assert torch.equal(x[0], torch.full_like(x[0], 0.5))  # the input is not modified


def test_photometric_per_op_rates():
    # The per-sample probabilities of the recipe: jitter 0.8, gray 0.2, blur 0.5 * (1 + 0.5) / 2 + 0.5 * 0.1,
    # solarise 0.5 * 0.2; each op alone (the others off) shows its own rate.
    x = torch.rand(4000, 3, 6, 6, generator=gen())
    base = {"jitter_p": 0.0, "gray_p": 0.0, "solarize_p": 0.0, "blur_sigma": (1.0, 1.0)}

    def changed(**recipe):
        return ((Photometric(**{**base, **recipe})(x, gen(5)) - x).abs().flatten(1).amax(1) > 1e-6).float().mean().item()

    assert abs(changed(jitter_p=0.8, blur_sigma=(1e-4, 1e-4)) - 0.8) < 0.03
    assert abs(changed(gray_p=0.2, blur_sigma=(1e-4, 1e-4)) - 0.2) < 0.03
    assert abs(changed() - 0.425) < 0.03
    only_solarise = Photometric(**{**base, "solarize_p": 1.0, "blur_sigma": (1e-4, 1e-4)})(x, gen(5))
    assert abs(((only_solarise - x).abs().flatten(1).amax(1) > 1e-6).float().mean().item() - 0.5) < 0.03


def test_hue_matches_kornia():
    import math

    from kornia.enhance import adjust_hue

    from udi.data.augment import _hue

    x = torch.rand(40, 3, 9, 9, generator=gen(2))
    x[:10] = (x[:10] * 4).round() / 4  # ties between channels and gray pixels
    f = torch.rand(40, generator=gen(3)) - 0.5
    assert torch.allclose(_hue(x, f), adjust_hue(x, f * 2 * math.pi).clamp(0, 1), atol=1e-5)
