"""Cost of the folder data path per image: decoding and cropping ImageNet-like JPEGs.

Writes ``--images`` JPEGs of 500 x 375 (quality 90) cut from scikit-image's sample photos into a
temporary folder, then measures, per image (process CPU time, one thread, median of repeats):

- ``canvas``: ``data.crops: canvas`` in the loader: decode (JPEG draft) + resize to the 256 px canvas;
- ``full``: ``data.crops: full`` in the loader: full-resolution decode + the 2 global (224) and 10
  local (96) antialiased crops (``FullResolutionViews``), and its decode part alone;

and the data loader's throughput with one worker process (images per second, wall clock, batch
64: what one worker feeds), for both. The crops of the canvas path are cut later on the device
(benchmarks/views_time.py).

    .venv/bin/python benchmarks/data_path.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as samples
from torch.utils.data import DataLoader

from udi.data.crops import FullResolutionViews
from udi.data.datasets import ImageFolderDataset, decode_image, load_image
from udi.data.views import ViewSpec

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def write_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` 500 x 375 JPEGs (quality 90): random crops of the sample photos, resized."""
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(getattr(samples, name)()).convert("RGB") for name in PHOTOS]
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw = int(rng.uniform(0.6, 1.0) * min(w, h * 4 / 3))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - int(cw * 0.75) + 1)
        crop = photo.crop((x0, y0, x0 + cw, y0 + int(cw * 0.75))).resize((500, 375), Image.Resampling.BICUBIC)
        paths.append(folder / f"{i:04d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def per_image_ms(fn, paths: list[Path], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for i, path in enumerate(paths):
            fn(path, i)
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times) / len(paths)


def loader_images_per_s(dataset, batch: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, num_workers=1, shuffle=False, drop_last=True)
    start, n = None, 0
    for i, _ in enumerate(loader):
        if i == 0:  # the first batch pays for starting the worker
            start = time.perf_counter()
            continue
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-images", type=int, default=512, help="images the loader runs read")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = ViewSpec()  # ImageNet ViT-S/16: 224 / 96, 10 locals
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = write_jpegs(folder, args.images)
        views = FullResolutionViews(spec, seed=0)
        rows = {
            "canvas (decode with draft + 256 px canvas)": per_image_ms(lambda p, i: load_image(p, 256), paths, args.repeats),
            "full: decode only": per_image_ms(lambda p, i: decode_image(p), paths, args.repeats),
            "full: decode + 2 x 224 + 10 x 96 crops": per_image_ms(views, paths, args.repeats),
        }
        for path in paths[args.images:]:
            path.unlink()
        many = Path(tmp) / "many"  # the loader runs read the same files again under other names
        many.mkdir()
        for i in range(args.loader_images):
            (many / f"{i:05d}.jpg").symlink_to(paths[i % len(paths)])
        canvas_set, full_set = ImageFolderDataset(many), ImageFolderDataset(many)
        full_set.views = views
        throughput = {"canvas": loader_images_per_s(canvas_set, 64), "full": loader_images_per_s(full_set, 64)}
    print(f"{args.images} JPEGs of 500 x 375, quality 90; ms per image, process CPU time, 1 thread, "
          f"median of {args.repeats}\n")
    print("| loader work per image | ms |\n|---|---:|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")
    print(f"\n| data loader, 1 worker, batch 64, {args.loader_images} images | images/s |\n|---|---:|")
    for name, rate in throughput.items():
        print(f"| data.crops: {name} | {rate:.0f} |")


if __name__ == "__main__":
    main()
