"""I-JEPA multi-block masking (udi.data.masking) and Bootleg's batch (udi.data.bootleg_views)."""
import math

import pytest
import torch

from udi.data.bootleg_views import make_bootleg_batch
from udi.data.masking import MaskSpec, block_size, sample_block_masks


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def as_sets(indices: torch.Tensor) -> list[set[int]]:
    return [set(row.flatten().tolist()) for row in indices]


@pytest.mark.parametrize("seed", range(20))
def test_masks_on_imagenet_grid(seed):
    spec = MaskSpec(grid=14)
    masks = sample_block_masks(32, spec, gen(seed))
    b, n_t, k = masks.targets.shape
    th, tw = masks.target_size
    assert (b, n_t, k) == (32, 4, th * tw)
    # Drawn scale and aspect ratio lie in their ranges, and the block follows I-JEPA's rounding.
    assert 0.15 <= masks.target_scale <= 0.2 and 0.75 <= masks.target_aspect <= 1.5
    keep = int(196 * masks.target_scale)
    assert (th, tw) == (round(math.sqrt(keep * masks.target_aspect)), round(math.sqrt(keep / masks.target_aspect)))
    ch, cw = masks.context_size
    assert ch == cw and ch in (13, 14)  # sqrt(int(196 * 0.85)) = 12.9 ... sqrt(196)
    # Each target block is a th x tw rectangle inside the 14 x 14 grid.
    rows, cols = masks.targets // 14, masks.targets % 14
    assert rows.min() >= 0 and rows.max() < 14 and cols.max() < 14
    assert torch.equal(rows.amax(-1) - rows.amin(-1) + 1, torch.full((b, n_t), th))
    assert torch.equal(cols.amax(-1) - cols.amin(-1) + 1, torch.full((b, n_t), tw))
    assert all(len(s) == th * tw for s in as_sets(masks.targets.flatten(0, 1)))
    # Context: distinct, ascending, no target patch, and the same count for every image.
    context = masks.context
    assert context.ndim == 2 and context.shape[1] >= spec.min_context
    assert torch.all(context[:, 1:] > context[:, :-1])
    assert not masks.relaxed.any()
    for ctx, tgt in zip(as_sets(context), as_sets(masks.targets)):
        assert not ctx & tgt


def reference_masks(batch: int, spec: MaskSpec, generator: torch.Generator):
    """Loop-based reference: the same draws, one image and one context try at a time."""
    lo_hi = lambda r: r[0] + (r[1] - r[0]) * torch.rand(1, generator=generator).item()
    th, tw = block_size(spec.grid, lo_hi(spec.target_scale), lo_hi(spec.target_aspect))
    ch, cw = block_size(spec.grid, lo_hi(spec.context_scale), 1.0)
    g = spec.grid
    t_rows = torch.randint(0, g - th + 1, (batch, spec.n_targets), generator=generator)
    t_cols = torch.randint(0, g - tw + 1, (batch, spec.n_targets), generator=generator)
    c_rows = torch.randint(0, g - ch + 1, (batch, spec.context_tries), generator=generator)
    c_cols = torch.randint(0, g - cw + 1, (batch, spec.context_tries), generator=generator)
    cells = lambda r, c, h, w: [(r + i) * g + c + j for i in range(h) for j in range(w)]
    targets, contexts, relaxed = [], [], []
    for b in range(batch):
        blocks = [cells(t_rows[b, j].item(), t_cols[b, j].item(), th, tw) for j in range(spec.n_targets)]
        targets.append(blocks)
        chosen = None
        for k in range(spec.n_targets, -1, -1):  # exclude the first k targets
            excluded = {i for block in blocks[:k] for i in block}
            for t in range(spec.context_tries):
                kept = sorted(set(cells(c_rows[b, t].item(), c_cols[b, t].item(), ch, cw)) - excluded)
                if len(kept) >= spec.min_context:
                    chosen = kept
                    break
            if chosen is not None:
                break
        contexts.append(chosen)
        relaxed.append(k < spec.n_targets)
    n = min(len(c) for c in contexts)
    return [c[:n] for c in contexts], targets, relaxed


@pytest.mark.parametrize("grid, min_context, seed", [(14, 10, 0), (14, 10, 1), (9, 5, 2), (4, 2, 3), (4, 10, 0)])
def test_vectorised_masks_equal_a_loop_reference(grid, min_context, seed):
    spec = MaskSpec(grid=grid, min_context=min_context)
    masks = sample_block_masks(24, spec, gen(seed))
    contexts, targets, relaxed = reference_masks(24, spec, gen(seed))
    if min_context == 10 and grid == 4:  # 10 of 16 patches: the relaxation path is exercised
        assert 0 < sum(relaxed) < 24
    assert masks.context.tolist() == contexts  # truncated to the batch minimum, row-major
    assert masks.targets.tolist() == targets
    assert masks.relaxed.tolist() == relaxed


def test_tiny_grid_relaxes_only_when_it_must():
    spec = MaskSpec(grid=4, min_context=2)
    relaxed_any = False
    for seed in range(100):
        masks = sample_block_masks(64, spec, gen(seed))
        assert masks.context.shape[1] >= 2
        for ctx, tgt, relaxed in zip(as_sets(masks.context), as_sets(masks.targets), masks.relaxed):
            if not relaxed:
                assert not ctx & tgt
        relaxed_any |= bool(masks.relaxed.any())
    # 4 target blocks of up to 2 x 2 can cover the whole 4 x 4 grid: the relaxation does occur.
    assert relaxed_any


def test_determinism_for_a_given_generator():
    spec = MaskSpec(grid=14)
    a, b = sample_block_masks(8, spec, gen(7)), sample_block_masks(8, spec, gen(7))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    c = sample_block_masks(8, spec, gen(8))
    same_context = c.context.shape == a.context.shape and torch.equal(c.context, a.context)
    same_targets = c.targets.shape == a.targets.shape and torch.equal(c.targets, a.targets)
    assert not (same_context and same_targets)  # another generator state, other masks


def test_positions_cover_every_placement():
    # Corners are uniform over all placements that fit, the last row and column included.
    spec = MaskSpec(grid=6, target_scale=(0.1, 0.1), target_aspect=(1.0, 1.0), min_context=1)
    assert block_size(6, 0.1, 1.0) == (2, 2)
    seen = set()
    for seed in range(30):
        seen |= set(sample_block_masks(16, spec, gen(seed)).targets.flatten().tolist())
    assert seen == set(range(36))


def test_block_size_is_clamped_to_the_grid():
    assert block_size(4, 1.0, 1.0) == (4, 4)  # I-JEPA would shrink it to 3 x 3
    assert block_size(2, 0.15, 1.0) == (1, 1)  # keep = 0 still gives a 1 x 1 block


def test_spec_validation():
    with pytest.raises(ValueError, match=r"min_context=10 must be in \[1, 9\]"):
        MaskSpec(grid=4, context_scale=(0.5, 1.0))  # the smallest context block is 3 x 3
    with pytest.raises(ValueError, match="target_scale"):
        MaskSpec(grid=14, target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="target_aspect"):
        MaskSpec(grid=14, target_aspect=(0.0, 1.0))


def test_bootleg_batch_shapes_flip_and_determinism():
    canvas = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    aspect = torch.ones(16)
    spec = MaskSpec(grid=4, min_context=2)
    a = make_bootleg_batch(canvas, aspect, 32, (0.3, 1.0), True, spec, gen(1))
    b = make_bootleg_batch(canvas, aspect, 32, (0.3, 1.0), True, spec, gen(1))
    assert a.images.shape == (16, 3, 32, 32) and torch.equal(a.images, b.images)
    assert torch.equal(a.masks.context, b.masks.context)
    # Without flips the same draws give the mirror image wherever a flip was drawn.
    c = make_bootleg_batch(canvas, aspect, 32, (0.3, 1.0), False, spec, gen(1))
    flipped = [not torch.allclose(a.images[i], c.images[i]) for i in range(16)]
    assert any(flipped) and not all(flipped)
    for i in range(16):
        expected = c.images[i].flip(-1) if flipped[i] else c.images[i]
        assert torch.allclose(a.images[i], expected, atol=1e-4)  # the mirrored sampling grid rounds differently
    assert torch.equal(a.masks.targets, c.masks.targets)  # the masks are drawn after the flips either way
