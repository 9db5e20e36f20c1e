"""What Bootleg's masking saves in the student encoder (results go to BENCHMARKS.md).

Time of one forward + backward of the student encoder on the context tokens only (what
Bootleg does: ``VisionTransformer``'s ``keep``) against the same encoder on all the patch
tokens, for the same images; the context is that of real multi-block masks of the batch
(``udi.data.masking``, I-JEPA settings, truncated to the batch minimum). Also the FLOPs of
both (torch's FlopCounterMode), which do not depend on the machine's noise. The two
variants are interleaved repetition by repetition so that noise hits both alike.

    .venv/bin/python benchmarks/bootleg_masking.py [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from udi.data.masking import MaskSpec, sample_block_masks
from udi.models.vit import build_vit

# (name, arch, patch, crop side, batch, min_context): the CPU demo's encoder and ViT-S/16 at 224.
SETTINGS = {
    "cpu": [("vit_nano/8, 32 px (bootleg_cpu_demo)", "vit_nano", 8, 32, 64, 2),
            ("vit_small/16, 224 px", "vit_small", 16, 224, 8, 10)],
    "cuda": [("vit_nano/8, 32 px (bootleg_cpu_demo)", "vit_nano", 8, 32, 64, 2),
             ("vit_small/16, 224 px, bf16", "vit_small", 16, 224, 128, 10)],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(model, images: torch.Tensor, keep: torch.Tensor | None, device: torch.device) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else None
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model.forward_features(images, keep=keep)
    out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def measure(name: str, arch: str, patch: int, size: int, batch: int, min_context: int, repeats: int,
            device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_vit(arch, patch_size=patch, img_size=size).to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    grid = size // patch
    masks = sample_block_masks(batch, MaskSpec(grid=grid, min_context=min_context), torch.Generator().manual_seed(0))
    context = masks.context.to(device)
    variants = {"context": context, "all": None}
    for keep in variants.values():  # warm-up
        forward_backward(model, images, keep, device)
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for key, keep in variants.items():
            sync(device)
            start = time.perf_counter()
            forward_backward(model, images, keep, device)
            sync(device)
            times[key].append(time.perf_counter() - start)
    flops = {}
    for key, keep in variants.items():
        with FlopCounterMode(display=False) as counter:
            forward_backward(model, images, keep, device)
        flops[key] = counter.get_total_flops()
    context_s, all_s = statistics.median(times["context"]), statistics.median(times["all"])
    return {
        "setting": name,
        "batch": batch,
        "patches": grid * grid,
        "context_tokens": context.shape[1],
        "context_fraction": round(context.shape[1] / grid**2, 3),
        "context_fwd_bwd_s": round(context_s, 4),
        "all_tokens_fwd_bwd_s": round(all_s, 4),
        "time_ratio": round(context_s / all_s, 3),
        "flop_ratio": round(flops["context"] / flops["all"], 3),
        "all_tokens_gflop": round(flops["all"] / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [measure(*setting, repeats=args.repeats, device=device) for setting in SETTINGS[device.type]]
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
