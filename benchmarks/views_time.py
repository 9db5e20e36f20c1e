"""Time of building UDI views (crops, photometric augmentation, correspondence maps) per image.

ImageNet settings (ViT-S/16: globals 224, locals 96, 10 locals, DINO's photometric recipe), one
thread, process CPU time, median over repeats; batch 4 and 64. Each part is timed on its own:
``crops`` (grid_sample from a 256 px canvas, the canvas path), ``photometric`` (all 12 crops of an
image), ``total`` = ``make_udi_views`` (the parts, the boxes, SRS masks, maps and normalisation; parts
timed alone include their own set-up, so they do not add up exactly); ``total, crops from the loader`` = ``views_from_crops`` on
uint8 crops (``data.crops: full``, whose crops are cut in the data loader: benchmarks/data_path.py).
With ``--baseline COMMIT`` the photometric augmentation of that commit's ``udi/data/augment.py``
(read with ``git show``) is timed in the same run, interleaved, for a before/after ratio.

    .venv/bin/python benchmarks/views_time.py [--batches 4,64] [--repeats 5] [--baseline f859f84]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types

import torch

from udi.data.augment import Photometric, crop_resize
from udi.data.views import ViewSpec, make_udi_views, sample_views, views_from_crops


def cpu_ms(fn, repeats: int) -> float:
    """Median process CPU time of ``fn()`` in ms (one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def module_at(commit: str, path: str) -> types.ModuleType:
    """``path`` as it was at ``commit``, imported as a fresh module."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"baseline_{commit}")
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="4,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--baseline", help="a git commit whose Photometric is timed beside today's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ViewSpec()
    baseline = module_at(args.baseline, "udi/data/augment.py").Photometric() if args.baseline else None
    print(f"views per image (ms, CPU time, 1 thread, median of {args.repeats}): globals {spec.global_size}, "
          f"locals {spec.local_size} x {spec.n_local}, canvas {args.canvas}")
    rows = []
    for b in [int(s) for s in args.batches.split(",")]:
        gen = torch.Generator().manual_seed(0)
        canvas = torch.randint(0, 256, (b, 3, args.canvas, args.canvas), dtype=torch.uint8, generator=gen)
        aspect = torch.full((b,), 4 / 3)
        boxes = sample_views(aspect, spec, gen)
        images = canvas.float() / 255
        g = torch.cat([crop_resize(images, boxes[:, v], spec.global_size) for v in range(2)])
        loc = torch.cat([crop_resize(images, boxes[:, v], spec.local_size) for v in range(2, spec.n_views)])
        aug = Photometric()

        def crops():
            [crop_resize(images, boxes[:, v], spec.global_size) for v in range(2)]
            [crop_resize(images, boxes[:, v], spec.local_size) for v in range(2, spec.n_views)]

        def photometric(recipe=aug):
            recipe(g, torch.Generator().manual_seed(1))
            recipe(loc, torch.Generator().manual_seed(2))

        row = {"batch": b, "crops": cpu_ms(crops, args.repeats) / b}
        if baseline is not None:  # interleaved with today's, one repeat each at a time
            old, new = [], []
            for _ in range(args.repeats):
                old.append(cpu_ms(lambda: photometric(baseline), 1) / b)
                new.append(cpu_ms(photometric, 1) / b)
            row["photometric (baseline)"], row["photometric"] = statistics.median(old), statistics.median(new)
        else:
            row["photometric"] = cpu_ms(photometric, args.repeats) / b
        row["total"] = cpu_ms(lambda: make_udi_views(canvas, aspect, spec, torch.Generator().manual_seed(3), aug),
                              args.repeats) / b
        # data.crops full: the loader has cut the crops (uint8); the main process does the rest.
        g8, loc8 = (x.mul(255).round().byte() for x in (g, loc))
        row["total, crops from the loader"] = cpu_ms(
            lambda: views_from_crops(g8, loc8, boxes, spec, torch.Generator().manual_seed(3), aug), args.repeats) / b
        row = {c: row[c] for c in ("batch", "crops", *[c for c in row if c.startswith("photometric")],
                                   "total", "total, crops from the loader")}
        rows.append(row)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---:|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.2f}" if c != "batch" else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
