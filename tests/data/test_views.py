"""Tests of UDI view sampling, SRS masks and correspondence maps (docs/methods.md section 2)."""
import math

import pytest
import torch

from udi.data.augment import IMAGENET_MEAN, IMAGENET_STD, Photometric, crop_resize
from udi.data.views import (
    UDIViews,
    ViewSpec,
    correspondence,
    make_udi_views,
    one_hot_selection,
    sample_crop_boxes,
    sample_views,
    shift_towards,
    srs_select,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unflip(boxes: torch.Tensor) -> torch.Tensor:
    x0, x1 = boxes[..., 0], boxes[..., 2]
    return torch.stack((torch.minimum(x0, x1), boxes[..., 1], torch.maximum(x0, x1), boxes[..., 3]), dim=-1)


def axis_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 2) per-axis overlap of unflipped boxes (negative: gap)."""
    return torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])


def linear_canvas(h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w) canvas whose R and G channels are the normalised x and y coordinates."""
    y, x = torch.meshgrid(torch.arange(h) / (h - 1), torch.arange(w) / (w - 1), indexing="ij")
    return torch.stack((x, y, torch.full_like(x, 0.25)))[None]


SMALL = dict(global_size=32, local_size=16, patch_size=4, n_local=2, global_window=2, local_window=2)


# --- ViewSpec -----------------------------------------------------------------------------


def test_viewspec_grids_and_validation():
    spec = ViewSpec()
    assert (spec.global_grid, spec.local_grid, spec.n_views) == (14, 6, 12)
    with pytest.raises(ValueError, match="divisible"):
        ViewSpec(global_size=225)
    with pytest.raises(ValueError, match="local_window"):
        ViewSpec(local_window=7)
    with pytest.raises(ValueError, match="srs_mode"):
        ViewSpec(srs_mode="grid")
    with pytest.raises(ValueError, match="local_scale"):
        ViewSpec(local_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="2x2"):
        ViewSpec(local_size=16, patch_size=16, local_window=1)


# --- crop boxes ---------------------------------------------------------------------------


def test_crop_boxes_respect_scale_and_ratio_or_fallback():
    aspect = torch.cat((torch.rand(1000, generator=gen(1)) * 2.5 + 0.4, torch.tensor([0.1, 10.0])))
    scale, ratio = (0.25, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(aspect, 4, scale, ratio, gen())
    assert boxes.shape == (1002, 4, 4) and boxes.dtype == torch.float32
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()

    a = aspect[:, None]
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    area = bw * bh  # fraction of the original image area
    px_ratio = bw * a / bh  # width / height in original pixels
    regular = (area >= scale[0] - 1e-5) & (area <= scale[1] + 1e-5)
    regular &= (px_ratio >= ratio[0] - 1e-4) & (px_ratio <= ratio[1] + 1e-4)
    # Fallback: central, spans the image on one axis, ratio = image ratio clamped.
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    clamped = a.clamp(*ratio).expand_as(px_ratio)
    fallback = (centre - 0.5).abs().amax(-1).lt(1e-5) & (px_ratio - clamped).abs().lt(1e-4)
    fallback &= (bw > 1 - 1e-5) | (bh > 1 - 1e-5)
    assert (regular | fallback).all()
    assert regular[:1000].float().mean() > 0.9  # ordinary aspects rarely need the fallback
    assert fallback[1000:].all()  # extreme aspects cannot fit a 3/4..4/3 crop of area >= 0.25


def test_crop_boxes_deterministic():
    aspect = torch.rand(16, generator=gen(3)) + 0.5
    a = sample_crop_boxes(aspect, 3, (0.05, 0.25), (0.75, 4 / 3), gen(7))
    b = sample_crop_boxes(aspect, 3, (0.05, 0.25), (0.75, 4 / 3), gen(7))
    c = sample_crop_boxes(aspect, 3, (0.05, 0.25), (0.75, 4 / 3), gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_views_flips_and_determinism():
    aspect = torch.rand(1000, generator=gen(2)) + 0.5
    spec = ViewSpec(n_local=3)
    boxes = sample_views(aspect, spec, gen())
    assert boxes.shape == (1000, 5, 4)
    assert torch.equal(boxes, sample_views(aspect, spec, gen()))
    flipped = boxes[..., 0] > boxes[..., 2]
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    assert (unflip(boxes) >= 0).all() and (unflip(boxes) <= 1 + 1e-6).all()
    never = sample_views(aspect, ViewSpec(flip_p=0.0), gen())
    assert (never[..., 0] < never[..., 2]).all()
    all_flipped = sample_views(aspect, ViewSpec(flip_p=1.0), gen())
    assert (all_flipped[..., 0] > all_flipped[..., 2]).all()


# --- shifts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, ref, expected",
    [
        # x disjoint (gap 0.3, smaller side 0.2): shift left by 0.3 + 0.1; y overlap 0.4 = smaller side: unchanged.
        ((0.6, 0.1, 0.8, 0.5), (0.1, 0.0, 0.3, 0.6), (0.2, 0.1, 0.4, 0.5)),
        # x overlap 0.05 <= 0.15: shift left by 0.15; y disjoint below (gap 0.2, smaller 0.2): up by 0.3.
        ((0.25, 0.0, 0.65, 0.2), (0.0, 0.4, 0.3, 0.9), (0.10, 0.3, 0.50, 0.5)),
        # overlap exactly half the smaller side (0.1) still shifts: right by 0.1.
        ((0.0, 0.2, 0.5, 0.8), (0.4, 0.2, 0.6, 0.8), (0.1, 0.2, 0.6, 0.8)),
        # overlap just above half: unchanged.
        ((0.0, 0.2, 0.5, 0.8), (0.39, 0.2, 0.59, 0.8), (0.0, 0.2, 0.5, 0.8)),
        # a reference beyond the image: the shifted box is translated back inside (0.7..1.1 -> 0.6..1.0).
        ((0.2, 0.3, 0.6, 0.7), (0.9, 0.3, 1.5, 0.7), (0.6, 0.3, 1.0, 0.7)),
    ],
)
def test_shift_towards_hand_cases(box, ref, expected):
    out = shift_towards(torch.tensor([[box]]), torch.tensor([ref]))
    assert torch.allclose(out[0, 0], torch.tensor(expected), atol=1e-6)


def test_shift_towards_uses_columns_for_width():
    # Disjoint along x only; y identical. A row/column mix-up would move the box differently.
    out = shift_towards(torch.tensor([[[0.7, 0.0, 0.9, 0.1]]]), torch.tensor([[0.0, 0.0, 0.4, 0.1]]))
    assert torch.allclose(out[0, 0], torch.tensor([0.3, 0.0, 0.5, 0.1]), atol=1e-6)


def test_views_overlap_after_shift():
    aspect = torch.rand(2000, generator=gen(4)) * 2 + 0.5
    spec = ViewSpec(n_local=4, flip_p=0.0)
    boxes = sample_views(aspect, spec, gen(5))
    g1, g2, locs = boxes[:, 0], boxes[:, 1], boxes[:, 2:]
    assert (axis_overlap(g2, g1) > 0).all()
    bbox = torch.cat((torch.minimum(g1[:, :2], g2[:, :2]), torch.maximum(g1[:, 2:], g2[:, 2:])), -1)
    assert (axis_overlap(locs, bbox[:, None]) > 0).all()

    # Same draws without the shift: g1 is the same, the others are the independent crops shifted.
    free = sample_views(aspect, ViewSpec(n_local=4, flip_p=0.0, shift=False), gen(5))
    assert torch.equal(free[:, 0], g1)
    assert torch.allclose(g2, shift_towards(free[:, 1:2], g1)[:, 0])
    assert torch.allclose(locs, shift_towards(free[:, 2:], bbox), atol=1e-6)
    assert (axis_overlap(free[:, 1], g1) <= 0).any()  # shifts are really needed sometimes


def test_flips_keep_the_shifted_geometry():
    aspect = torch.rand(300, generator=gen(6)) + 0.5
    plain = sample_views(aspect, ViewSpec(n_local=2, flip_p=0.0), gen(9))
    flipped = sample_views(aspect, ViewSpec(n_local=2, flip_p=0.5), gen(9))
    assert torch.equal(unflip(flipped), plain)


# --- SRS ----------------------------------------------------------------------------------


def _window_counts(select, grid, window, corner_r, corner_c):
    """(B, n*n) number of points in each window of the block placed at (corner_r, corner_c)."""
    n = grid // window
    r, c = select // grid - corner_r[:, None], select % grid - corner_c[:, None]
    inside = (r >= 0) & (r < n * window) & (c >= 0) & (c < n * window)
    flat = (r.clamp(0, n * window - 1) // window) * n + c.clamp(0, n * window - 1) // window
    counts = torch.zeros(select.shape[0], n * n, dtype=torch.long).scatter_add_(1, flat, inside.long())
    return counts


@pytest.mark.parametrize("grid, window", [(14, 3), (6, 2), (7, 2), (5, 5)])
def test_srs_random_one_point_per_window(grid, window):
    b = 400
    select = srs_select(b, grid, window, "random", gen())
    n, spare = grid // window, grid - (grid // window) * window
    assert select.shape == (b, n * n) and select.dtype == torch.long
    assert ((select >= 0) & (select < grid * grid)).all()
    assert torch.equal(select, srs_select(b, grid, window, "random", gen()))
    # Some corner placement puts exactly one point in each window.
    ok = torch.zeros(b, dtype=torch.bool)
    for cr in (0, spare):
        for cc in (0, spare):
            counts = _window_counts(select, grid, window, torch.full((b,), cr), torch.full((b,), cc))
            ok |= (counts == 1).all(dim=1)
    assert ok.all()
    # Random cells: every offset inside a window occurs.
    offsets = (select // grid % window) * window + select % grid % window
    if spare == 0:
        assert len(offsets.unique()) == window * window


def test_srs_uniform_first_cell_and_corners():
    b, grid, window = 800, 14, 3
    select = srs_select(b, grid, window, "uniform", gen())
    rows, cols = select // grid, select % grid
    corner_r, corner_c = rows.min(dim=1).values, cols.min(dim=1).values
    assert set(corner_r.tolist()) == {0, 2} and set(corner_c.tolist()) == {0, 2}
    start = torch.arange(4) * window
    assert torch.equal(rows.view(b, 4, 4), corner_r[:, None, None] + start[None, :, None].expand(b, 4, 4))
    assert torch.equal(cols.view(b, 4, 4), corner_c[:, None, None] + start[None, None, :].expand(b, 4, 4))
    corner = corner_r // 2 * 2 + corner_c // 2
    freq = torch.bincount(corner, minlength=4).float() / b
    assert (freq - 0.25).abs().max() < 0.05


def test_srs_dense_and_no_spare():
    dense = srs_select(3, 6, 2, "dense", gen())
    assert torch.equal(dense, torch.arange(36).expand(3, 36))
    uniform = srs_select(2, 6, 2, "uniform", gen())  # n * w == grid: no corner randomness
    expected = torch.tensor([0, 2, 4, 12, 14, 16, 24, 26, 28])
    assert torch.equal(uniform, expected.expand(2, 9))
    with pytest.raises(ValueError):
        srs_select(2, 6, 2, "grid", gen())


# --- correspondence -----------------------------------------------------------------------


def test_one_hot_selection():
    select = torch.tensor([[0, 5, 8], [3, 3, 1]])
    m = one_hot_selection(select, 3)
    assert m.shape == (2, 3, 9) and m.dtype == torch.float32
    assert torch.equal(m.argmax(-1), select) and torch.equal(m.sum(-1), torch.ones(2, 3))


def test_correspondence_distinct_colour_cells():
    """Cell-aligned crops of a canvas with one colour per cell: the teacher's largest weight
    lands on the patch showing the student's patch colour, and validity is exactly
    "the student's cell is inside the teacher crop"."""
    n_cells, cell, grid, patch = 20, 6, 6, 4
    side = n_cells * cell
    size = grid * patch
    idx = torch.arange(side) // cell
    cy, cx = torch.meshgrid(idx, idx, indexing="ij")
    canvas = torch.stack((cx / (n_cells - 1), cy / (n_cells - 1), torch.full(cx.shape, 0.5)))[None]

    b = 256
    g = gen(11)
    # Student spans cells [a, a + grid) per axis, the teacher is offset by d in {-2, -1, 1, 2}.
    a_s = torch.randint(3, n_cells - grid - 2, (b, 2), generator=g)
    d = torch.tensor([-2, -1, 1, 2])[torch.randint(0, 4, (b, 2), generator=g)]
    a_t = a_s + d

    def box(a, flip):
        # Cell j covers pixels [cell*j, cell*j + cell - 1]; its edges are half a pixel outside.
        lo = (a * cell - 0.5) / (side - 1)
        hi = ((a + grid) * cell - 0.5) / (side - 1)
        out = torch.stack((lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]), dim=-1)
        return torch.where(flip[:, None], out[:, [2, 1, 0, 3]], out)

    src = box(a_s, torch.rand(b, generator=g) < 0.5)
    tgt = box(a_t, torch.rand(b, generator=g) < 0.5)

    def patch_colours(bx):
        crop = crop_resize(canvas.expand(b, -1, -1, -1), bx, size, mode="nearest")
        centres = torch.arange(grid) * patch + patch // 2
        return crop[:, :, centres][:, :, :, centres].flatten(2).transpose(1, 2)  # (B, grid**2, 3)

    src_col, tgt_col = patch_colours(src), patch_colours(tgt)
    for select in (srs_select(b, grid, 2, "random", g), srs_select(b, grid, 2, "dense", g)):
        weights, valid = correspondence(src, grid, select, tgt, grid)
        student = src_col.gather(1, select[..., None].expand(-1, -1, 3))
        teacher = tgt_col.gather(1, weights.argmax(-1, keepdim=True).expand(-1, -1, 3))
        present = (student[:, :, None] == tgt_col[:, None]).all(-1).any(-1)
        assert torch.equal(valid, present)
        assert 0.2 < valid.float().mean() < 0.9
        assert torch.equal(teacher[valid], student[valid])


def _direct_positions(box, grid, select):
    r, c = select // grid, select % grid
    x = box[:, None, 0] + c / (grid - 1) * (box[:, None, 2] - box[:, None, 0])
    y = box[:, None, 1] + r / (grid - 1) * (box[:, None, 3] - box[:, None, 1])
    return x, y


@pytest.mark.parametrize("src_grid, tgt_grid", [(5, 7), (3, 7), (7, 5)])
def test_correspondence_exact_geometry(src_grid, tgt_grid):
    """On a canvas linear in x and y, the student's crop at each valid grid point equals the
    teacher's crop bilinearly interpolated with the map (grid g <-> pixel g (size-1)/(G-1))."""
    b, step_s, step_t = 64, 8, 6
    size_s, size_t = (src_grid - 1) * step_s + 1, (tgt_grid - 1) * step_t + 1
    aspect = torch.full((b,), 1.4)
    canvas = linear_canvas(50, 70).expand(b, -1, -1, -1)
    boxes = sample_views(aspect, ViewSpec(n_local=1, flip_p=0.5), gen(12))
    assert (boxes[:, :, 0] > boxes[:, :, 2]).any()
    select = srs_select(b, src_grid, 1, "dense", gen())
    for s, t in ((0, 1), (1, 0), (2, 0), (2, 1)):
        src, tgt = boxes[:, s], boxes[:, t]
        weights, valid = correspondence(src, src_grid, select, tgt, tgt_grid)
        assert weights.shape == (b, src_grid**2, tgt_grid**2) and weights.dtype == torch.float32

        student = crop_resize(canvas, src, size_s, mode="bilinear")[:, :, ::step_s, ::step_s]
        student = student.flatten(2).transpose(1, 2)  # (B, F*F, 3) at the grid points
        teacher = crop_resize(canvas, tgt, size_t, mode="bilinear")[:, :, ::step_t, ::step_t]
        teacher = teacher.flatten(2).transpose(1, 2)  # (B, G*G, 3)
        predicted = weights @ teacher
        assert torch.allclose(predicted[valid], student[valid], atol=1e-4)

        # The student's pixel values are the points' image positions: validity is "strictly inside".
        x, y = _direct_positions(src, src_grid, select)
        assert torch.allclose(student[..., 0], x, atol=1e-5) and torch.allclose(student[..., 1], y, atol=1e-5)
        tx0, tx1 = tgt[:, None, [0, 2]].min(-1).values, tgt[:, None, [0, 2]].max(-1).values
        ty0, ty1 = tgt[:, None, 1], tgt[:, None, 3]
        margin = torch.stack((x - tx0, tx1 - x, y - ty0, ty1 - y), -1).amin(-1)
        clear = margin.abs() > 1e-5
        assert torch.equal(valid[clear], (margin > 0)[clear])
        assert 0.1 < valid.float().mean() < 1

        sums = weights.sum(-1)
        assert torch.allclose(sums[valid], torch.ones_like(sums[valid]), atol=1e-6)
        assert (weights[~valid] == 0).all()
        assert (weights >= 0).all()


def test_correspondence_identity_and_last_row_column():
    grid = 5
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.7, 0.2, 0.1, 0.9]])  # second one flipped
    dense = srs_select(2, grid, 1, "dense", gen())
    weights, valid = correspondence(box, grid, dense, box, grid)
    r, c = dense // grid, dense % grid
    interior = (r > 0) & (r < grid - 1) & (c > 0) & (c < grid - 1)
    assert torch.equal(valid, interior)  # border points lie on the box edge: not strictly inside
    assert torch.allclose(weights[valid], one_hot_selection(dense, grid)[valid], atol=1e-5)

    # Points just inside the last row/column use the last cell and weights still sum to 1.
    tgt = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    src = torch.tensor([[0.001, 0.001, 0.999, 0.999]])
    last = torch.tensor([[grid * grid - 1]])
    w, v = correspondence(src, grid, last, tgt, 4)
    assert v.all() and w.argmax().item() == 15
    assert math.isclose(w.sum().item(), 1.0, abs_tol=1e-6)


# --- make_udi_views -----------------------------------------------------------------------


def _views_equal(a: UDIViews, b: UDIViews) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)


def test_make_udi_views_shapes_and_determinism():
    b = 3
    spec = ViewSpec(**SMALL)
    canvas = torch.randint(0, 256, (b, 3, 40, 50), dtype=torch.uint8, generator=gen(13))
    aspect = torch.tensor([1.25, 0.8, 2.0])
    v = make_udi_views(canvas, aspect, spec, gen(1))
    ng, sg, sl = 64, 16, 4
    expected = {
        "globals_": ((2 * b, 3, 32, 32), torch.float32),
        "locals_": ((2 * b, 3, 16, 16), torch.float32),
        "boxes": ((b, 4, 4), torch.float32),
        "select_global": ((b, sg), torch.long),
        "select_local": ((b, sl), torch.long),
        "map_global": ((2, b, sg, ng), torch.float32),
        "valid_global": ((2, b, sg), torch.bool),
        "map_local": ((2, 2, b, sl, ng), torch.float32),
        "valid_local": ((2, 2, b, sl), torch.bool),
    }
    for name, (shape, dtype) in expected.items():
        t = getattr(v, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, name
    assert _views_equal(v, make_udi_views(canvas, aspect, spec, gen(1)))
    assert not _views_equal(v, make_udi_views(canvas, aspect, spec, gen(2)))
    assert _views_equal(v, v.to("cpu"))
    # The float canvas gives the same views as the uint8 one.
    vf = make_udi_views(canvas.float() / 255, aspect, spec, gen(1))
    assert torch.allclose(vf.globals_, v.globals_, atol=1e-5)


def test_make_udi_views_without_locals():
    spec = ViewSpec(**{**SMALL, "n_local": 0})
    canvas = torch.rand(2, 3, 24, 24)
    v = make_udi_views(canvas, torch.ones(2), spec, gen())
    assert v.locals_.shape == (0, 3, 16, 16)
    assert v.map_local.shape == (0, 2, 2, 4, 64) and v.valid_local.shape == (0, 2, 2, 4)
    assert v.boxes.shape == (2, 2, 4) and v.globals_.shape == (4, 3, 32, 32)


def test_make_udi_views_maps_match_crops():
    """End to end on a linear canvas without photometric changes: for every (student, teacher)
    pair of the batch layout, the map reads the teacher crop where the student point is."""
    b = 4
    # Sizes where grid points fall on whole pixels: (size - 1) is a multiple of (grid - 1).
    spec = ViewSpec(global_size=25, local_size=15, patch_size=5, n_local=2, global_window=2, local_window=1)
    canvas = linear_canvas(48, 64).expand(b, -1, -1, -1)
    v = make_udi_views(canvas, torch.full((b,), 4 / 3), spec, gen(3), Photometric(enabled=False))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    glob = (v.globals_ * std + mean).view(2, b, 3, 25, 25)
    loc = (v.locals_ * std + mean).view(2, b, 3, 15, 15)

    def at_grid(x, grid):  # (B, 3, S, S) -> (B, grid*grid, 2) R,G at grid points
        pix = torch.arange(grid) * ((x.shape[-1] - 1) // (grid - 1))
        return x[:, :2][:, :, pix][:, :, :, pix].flatten(2).transpose(1, 2)

    def check(student, select, weights, valid, teacher, grid_s):
        s = at_grid(student, grid_s).gather(1, select[..., None].expand(-1, -1, 2))
        t = weights @ at_grid(teacher, 5)
        assert valid.any()
        assert torch.allclose(t[valid], s[valid], atol=5e-3)

    for u in range(2):
        check(glob[u], v.select_global, v.map_global[u], v.valid_global[u], glob[1 - u], 5)
    for j in range(2):
        for t in range(2):
            check(loc[j], v.select_local, v.map_local[j, t], v.valid_local[j, t], glob[t], 3)


@pytest.mark.cuda
def test_make_udi_views_on_cuda_match_the_cpu():
    """Views, SRS masks and correspondence maps built on the GPU are those built on the CPU."""
    spec = ViewSpec(global_size=32, local_size=16, patch_size=4, n_local=3, global_window=2, local_window=2)
    canvas = torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8, generator=gen(21))
    aspect = torch.tensor([1.2, 0.8, 1.0, 2.0])
    cpu = make_udi_views(canvas, aspect, spec, gen(5))
    cuda = make_udi_views(canvas.cuda(), aspect.cuda(), spec, gen(5))
    assert all(getattr(cuda, k).device.type == "cuda" for k in cuda.__dataclass_fields__)
    cuda = cuda.to("cpu")
    for name in ("boxes", "select_global", "select_local", "valid_global", "valid_local"):
        assert torch.equal(getattr(cuda, name), getattr(cpu, name)), name
    for name in ("map_global", "map_local"):
        assert torch.allclose(getattr(cuda, name), getattr(cpu, name), atol=1e-5), name
    for name in ("globals_", "locals_"):  # crops after resizing and photometric changes
        assert torch.allclose(getattr(cuda, name), getattr(cpu, name), atol=1e-3), name
