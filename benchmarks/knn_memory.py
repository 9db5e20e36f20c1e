"""Peak memory of k-NN classification at ImageNet size (issue 13, item 4).

Random features, N training rows, M test rows, D dims, C classes, k neighbours (defaults
50,000 x 10,000 x 384, C = 1000, k = 200, chunks of 1024 test rows), for two variants:

  - ``one_hot``: the former ``knn_predict``, which built an int64 one-hot of the neighbours'
    labels, (chunk, k, C), per chunk (reimplemented here for the comparison);
  - ``scatter``: ``udi.eval.knn.knn_predict``, which scatter-adds the vote weights into a
    (chunk, C) table.

Each variant runs in a fresh subprocess; the peak is its max RSS (``getrusage``) after
``knn_predict`` minus its max RSS just before (the features already allocated), so the
number is what the prediction itself adds. Both must give the same top-1 predictions.

    .venv/bin/python benchmarks/knn_memory.py [--train 50000] [--test 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

VARIANTS = ("one_hot", "scatter")


@torch.no_grad()
def knn_one_hot(train_features, train_labels, test_features, k, num_classes, temperature=0.07, chunk_size=1024):
    """The former formula: votes from an (m, k, C) one-hot per chunk."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(test), chunk_size):
        sim, idx = (test[start : start + chunk_size] @ train.T).topk(k, dim=1)
        votes = F.one_hot(train_labels[idx], num_classes).float()  # (m, k, C)
        scores.append((votes * (sim / temperature).exp().unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """Run one variant; print a JSON line with the max RSS before and after, and a digest of
    the top-1 predictions."""
    from udi.eval.knn import knn_predict

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=g)
    test = torch.randn(args.test, args.dim, generator=g)
    labels = torch.randint(0, args.classes, (args.train,), generator=g)
    before = max_rss_mib()
    fn = knn_one_hot if args.child == "one_hot" else knn_predict
    scores = fn(train, labels, test, args.k, args.classes, 0.07, chunk_size=args.chunk)
    after = max_rss_mib()
    digest = hashlib.sha1(scores.argmax(1).numpy().tobytes()).hexdigest()[:12]
    print(json.dumps({"before": before, "after": after, "digest": digest}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    flags = [f"--{name}={getattr(args, name)}" for name in ("train", "test", "dim", "classes", "k", "chunk", "threads")]
    rows = {}
    for variant in args.variants:
        out = subprocess.run([sys.executable, __file__, *flags, f"--child={variant}"],
                             capture_output=True, text=True, check=True)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"k-NN peak memory: N = {args.train} train, M = {args.test} test, D = {args.dim}, "
          f"C = {args.classes}, k = {args.k}, chunks of {args.chunk}\n")
    print("| variant | max RSS before (MiB) | max RSS after (MiB) | added by knn_predict (MiB) |")
    print("|---|---:|---:|---:|")
    for variant, r in rows.items():
        print(f"| {variant} | {r['before']:.0f} | {r['after']:.0f} | {r['after'] - r['before']:.0f} |")
    if len({r["digest"] for r in rows.values()}) > 1:
        sys.exit("the variants' top-1 predictions differ")
    print("\ntop-1 predictions identical across variants" if len(rows) > 1 else "")


if __name__ == "__main__":
    main()
