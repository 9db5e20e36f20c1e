"""Learning curves: UDI, DINO and Bootleg with the same CPU recipe and budget, several seeds.

Each method pretrains with the recipe config (UDI and DINO: `--config`, DINO = the same with
the extra token and the patch level off; Bootleg: `bootleg_cpu_demo` with the recipe's model,
epochs, batch size and optimiser length) for every seed, with the online k-NN of the teacher
(`train.eval_every`) on. Then every teacher, the random initialisation (step 0 of seed 0 of
each method) and raw pixels go through the same protocols on `scenes` ([cls] and the mean
patch token). With `--jobs N`, N runs train at once, each in its own process with the cores
shared out. Interrupted, the script picks up where it was: a run resumes from its checkpoint,
and finished runs and evaluations are read back from `OUT/eval/NAME/results.json`. Written to
`--out`:

- `learning_curves.md`: one table, mean +- std over seeds per method, with the baseline and
  chance rows (raw pixels: k-NN, linear and low-shot only), the number of seeds and images;
- `learning_curves.png`: online k-NN top-1 ([cls], mean patch token) against the training
  step, one line per method (mean over seeds, band = min..max);
- `learning_curves.json`: everything.
With `--benchmarks BENCHMARKS.md` the table and the PNG link replace the block between
`<!-- learning_curves:start -->` and `<!-- learning_curves:end -->` of that file.

    .venv/bin/python benchmarks/learning_curves.py [--config udi_cpu_recipe] [--seeds 0,1,2]
        [--methods udi,dino,bootleg] [--jobs 2] [--out runs/learning_curves] [--benchmarks BENCHMARKS.md] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from matplotlib.figure import Figure

from udi.config import load_config, resolve_config_path
from udi.eval.baselines import CHANCE, RANDOM_INIT, pixel_baselines, random_init
from udi.eval.suite import SuiteOptions, comparison_rows, run_suite
from udi.io.checkpoint import atomic_write
from udi.models.pretrained import load_backbone
from udi.train.loop import pretrain
from udi.viz.curves import read_log

MARK_START, MARK_END = "<!-- learning_curves:start -->", "<!-- learning_curves:end -->"
FEATURES = ["cls", "patch_mean"]
OPTIONS = SuiteOptions(linear_augment=False, linear_epochs=30, lowshot_repeats=1, progress=False)


def method_config(recipe: str, method: str, seed: int, overrides: list[str]) -> dict:
    """The recipe for ``method`` and ``seed`` (its ``train.eval_every`` drives the curves)."""
    common = [f"train.seed={seed}", "train.progress=false", *overrides]
    if method != "bootleg":
        return load_config(resolve_config_path(recipe), [f"method={method}", *common])
    udi = method_config(recipe, "udi", seed, overrides)
    shared = [f"model.{k}={json.dumps(v)}" for k, v in udi["model"].items() if v is not None]
    shared += [f"train.{k}={json.dumps(udi['train'][k])}" for k in ("epochs", "batch_size", "eval_every",
                                                                  "eval_images", "log_every")]
    return load_config(resolve_config_path("bootleg_cpu_demo"), [*shared, *common])


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def curves_figure(logs: dict[str, list[list[dict]]]) -> Figure:
    """Online k-NN against step: one panel per feature, one line per method (band: min..max over seeds)."""
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("knn_cls", "knn_patch_mean"), ("[cls]", "mean patch token")):
        for method, runs in logs.items():
            per_seed = [{r["step"]: r[key] for r in log if key in r} for log in runs]
            steps = sorted(set.intersection(*(set(s) for s in per_seed)))
            if not steps:
                continue
            values = [[s[step] for s in per_seed] for step in steps]
            ax.plot(steps, [statistics.mean(v) for v in values], marker="o", markersize=3, label=method)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        ax.set_title(f"online k-NN top-1 (%), {title}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def markdown(rows: dict[str, dict[str, str]]) -> str:
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(row.get(c, "-") for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines) + "\n"


RESULTS, TIMINGS = "results.json", "timings.jsonl"


def run_one(args: argparse.Namespace, method: str, seed: int) -> None:
    """Pretrain one (method, seed) (resuming its checkpoint if an earlier call was cut off), then
    evaluate its teacher; the results go to ``OUT/eval/NAME/results.json``, the training time of
    this call to ``OUT/timings.jsonl`` (one line per call, so a resumed run's time adds up)."""
    out, name = Path(args.out), f"{method}_seed{seed}"
    cfg = method_config(args.config, method, seed, args.overrides)
    log = out / name / "log.jsonl"
    first_step = read_log(log)[-1]["step"] if log.is_file() and log.stat().st_size else 0
    tick, cpu_tick = time.perf_counter(), time.process_time()
    try:
        pretrain(cfg, out / name)
    finally:  # also when stopped (SIGTERM: the loop checkpoints first), so that a resumed run's time adds up
        timing = {"run": name, "from_step": first_step, "to_step": read_log(log)[-1]["step"] if log.is_file() else 0,
                  "seconds": round(time.perf_counter() - tick, 1), "threads": torch.get_num_threads(),
                  "cpu_seconds": round(time.process_time() - cpu_tick, 1)}
        with open(out / TIMINGS, "a") as file:
            file.write(json.dumps(timing) + "\n")
    results = run_suite(load_backbone(out / name), "scenes", args.protocols.split(","), FEATURES,
                        out / "eval" / name, options=OPTIONS)
    atomic_write(out / "eval" / name / RESULTS, lambda tmp: Path(tmp).write_text(json.dumps(results)))


def run_all(args: argparse.Namespace, jobs: list[tuple[str, int]]) -> None:
    """Run ``jobs`` (method, seed) as subprocesses, ``args.jobs`` at a time, the cores shared out
    between them; each one's output goes to ``OUT/NAME.log``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    waiting, running, failed = list(jobs), {}, []
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        _schedule(args, out, env, threads, waiting, running, failed)
    finally:  # stopped (Ctrl-C, SIGTERM): each run checkpoints at its step and the next call resumes it
        for process in running.values():
            process.terminate()
        for process in running.values():
            process.wait()
    if failed:
        raise SystemExit(f"failed: {failed} (see their .log files in {out})")


def _schedule(args, out, env, threads, waiting, running, failed) -> None:
    while waiting or running:
        while waiting and len(running) < args.jobs:
            method, seed = waiting.pop(0)
            command = [sys.executable, __file__, "--one", f"{method}:{seed}", "--config", args.config,
                       "--protocols", args.protocols, "--out", args.out, *args.overrides]
            with open(out / f"{method}_seed{seed}.log", "a") as log:
                running[(method, seed)] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"started {method} seed {seed} ({threads} threads): log in {out / f'{method}_seed{seed}.log'}",
                  flush=True)
        time.sleep(2)
        for job, process in list(running.items()):
            if process.poll() is not None:
                del running[job]
                print(f"finished {job[0]} seed {job[1]}: exit {process.returncode}", flush=True)
                if process.returncode:
                    failed.append(job)


def train_seconds(out: Path) -> dict[str, str]:
    """Training time per run from ``timings.jsonl`` (wall and process CPU time; the parts of a
    run that was cut off and resumed add up, the steps redone after the last checkpoint included)."""
    calls: dict[str, list[dict]] = {}
    if (out / TIMINGS).is_file():
        for line in (out / TIMINGS).read_text().splitlines():
            record = json.loads(line)
            calls.setdefault(record["run"], []).append(record)
    seconds = {}
    for name, records in calls.items():
        done = [r for r in records if r["to_step"] > r["from_step"] or r["seconds"] >= 5]  # not "finished" calls
        wall, cpu = sum(r["seconds"] for r in done), sum(r.get("cpu_seconds", 0) for r in done)
        threads = sorted({r["threads"] for r in done})
        seconds[name] = (f"{wall:.0f} s wall, {cpu:.0f} s CPU on {'/'.join(map(str, threads))} thread(s)"
                         + (f", in {len(done)} parts" if len(done) > 1 else "") + untimed_steps(done))
    return seconds


def untimed_steps(records: list[dict]) -> str:
    """``", steps 0-200 not timed"`` for the stretches of a run that no record covers (a part
    killed without its ``finally``, e.g. SIGKILL), else ""."""
    gaps, reached = [], 0
    for record in sorted(records, key=lambda r: r["from_step"]):
        if record["from_step"] > reached:
            gaps.append(f"{reached}-{record['from_step']}")
        reached = max(reached, record["to_step"])
    return f", steps {', '.join(gaps)} not timed (a part killed)" if gaps else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="udi_cpu_recipe", help="the UDI recipe (DINO: the same, method=dino)")
    parser.add_argument("--methods", default="udi,dino,bootleg")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="knn,linear,lowshot,dense,richness")
    parser.add_argument("--out", default="runs/learning_curves")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (the cores are shared out)")
    parser.add_argument("--benchmarks", help="a markdown file whose learning_curves block is replaced")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # METHOD:SEED, the work of one subprocess
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    if args.one:
        method, seed = args.one.split(":")
        return run_one(args, method, int(seed))
    out, seeds, methods = Path(args.out), [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    protocols = args.protocols.split(",")
    names = {(m, s): f"{m}_seed{s}" for m in methods for s in seeds}
    run_all(args, [job for job, name in names.items() if not (out / "eval" / name / RESULTS).is_file()])
    results = {job: json.loads((out / "eval" / name / RESULTS).read_text()) for job, name in names.items()}
    logs = {m: [read_log(out / names[(m, s)] / "log.jsonl") for s in seeds] for m in methods}

    references = {}
    for method in methods:
        cfg = method_config(args.config, method, seeds[0], args.overrides)
        references[f"{RANDOM_INIT} ({method})"] = random_init(load_backbone(out / names[(method, seeds[0])]), cfg)
    # Pixel rows without richness: its probes on 3 x 32 x 32 values take many minutes.
    references.update(pixel_baselines(load_backbone(out / names[(methods[0], seeds[0])]),
                                      tuple(p for p in ("knn", "linear", "lowshot") if p in protocols)))
    for name, backbone in references.items():
        folder = out / "eval" / name.replace(" ", "_").replace("(", "").replace(")", "")
        if not (folder / RESULTS).is_file():  # (the runs' results are read back the same way: as JSON)
            result = run_suite(backbone, "scenes", protocols, FEATURES, folder, options=OPTIONS)
            atomic_write(folder / RESULTS, lambda tmp: Path(tmp).write_text(json.dumps(result)))
        results[(name, None)] = json.loads((folder / RESULTS).read_text())

    flat = comparison_rows({f"{m} seed {s}" if s is not None else m: r for (m, s), r in results.items()})
    table: dict[str, dict[str, str]] = {}
    for method in methods:
        per_seed = [flat[f"{method} seed {s}"] for s in seeds]
        table[f"{method} ({len(seeds)} seeds)"] = {c: mean_std([row[c] for row in per_seed])
                                                   for c in per_seed[0] if all(c in row for row in per_seed)}
    for name in [*references, CHANCE]:
        table[name] = {c: f"{v:.2f}" for c, v in flat[name].items()}
    steps = {m: logs[m][0][-1]["step"] for m in methods}
    header = (f"`benchmarks/learning_curves.py --config {args.config} --seeds {args.seeds} "
              f"{' '.join(args.overrides)}`: scenes, 10,000 train / 2,000 val images, "
              f"steps {steps}, training time per run {train_seconds(out)}.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    figure = curves_figure(logs)
    figure.savefig(out / "learning_curves.png")
    png = "learning_curves.png"
    if args.benchmarks:  # the picture goes beside the benchmarks page, in benchmarks/
        png = "benchmarks/learning_curves.png"
        target = Path(args.benchmarks).parent / png
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
    text = header + markdown(table) + f"\n![online k-NN against step]({png})\n"
    (out / "learning_curves.md").write_text(text)
    (out / "learning_curves.json").write_text(json.dumps(
        {"table": table, "seconds": train_seconds(out), "results": {f"{m} {s}": r for (m, s), r in results.items()}}, indent=2))
    if args.benchmarks:
        path = Path(args.benchmarks)
        page = path.read_text()
        if MARK_START not in page or MARK_END not in page:
            raise SystemExit(f"{path} has no {MARK_START} ... {MARK_END} block to replace")
        before, rest = page.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        path.write_text(before + MARK_START + "\n" + text + MARK_END + after)
    print(text)


if __name__ == "__main__":
    main()
