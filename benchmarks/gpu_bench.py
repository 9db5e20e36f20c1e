"""GPU benchmark of pretraining: images/s and MFU of ViT-S/16 UDI and DINO (results: BENCHMARKS.md).

The models are those of udi/configs/udi_vits16_in1k_300ep.yaml and udi/configs/dino_vits16_in1k_300ep.yaml
(ViT-S/16, 2 globals of 224 px, 10 locals of 96 px, K = 65536 prototypes, bf16 autocast) on a fixed
batch of synthetic ``scenes`` canvases of 256 px (the recipes' canvas size; ``data.crops: canvas``:
the crops are cut on the device), batch 64 on one device, each with ``train.compile`` off and on. A
step is the Trainer's whole training step (views and maps built on the device, student and teacher
forward, backward, optimiser, EMA), timed between ``torch.cuda.synchronize`` calls. Per case:

- images/s: batch / median time of ``--steps`` steps after ``--warmup`` warm-up steps;
- FLOPs of one step: torch's FlopCounterMode over one eager step (forward and backward, teacher
  included); the compiled case does the same arithmetic and is given the eager count;
- MFU: achieved FLOP/s over the peak measured here (bf16 ``8192^3`` matrix products);
- warm-up time (with compile: the compilation, reported as compile_s = warm-up time minus as many
  steady steps), peak device memory, and the time of the views + correspondence maps of a batch.

Each case runs in a child process under a time limit (``--case-budget`` s, plus ``--compile-budget``
s with compile), so that a compilation that overruns its budget is stopped and recorded as such;
``--budget`` caps the whole run. The parent process never imports torch.

    python benchmarks/gpu_bench.py [--quick] [--out DIR]               # a CUDA GPU
    python benchmarks/gpu_bench.py --device cpu --steps 2 --batch 2    # CPU smoke test
    python benchmarks/gpu_bench.py --report WORK --out DIR             # benchmarks/gpu_check.sh's summary
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
import traceback
import xml.etree.ElementTree as ElementTree
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = {"udi": "udi_vits16_in1k_300ep", "dino": "dino_vits16_in1k_300ep"}
# requirements.lock names whose import name differs (others: the name with '-' as '_').
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn", "scikit-image": "skimage"}


# ---------------------------------------------------------------------------- child processes
def case_overrides(device: str, batch: int, compile_: bool, extra: list[str]) -> list[str]:
    """The ImageNet recipe on a fixed batch of synthetic canvases (one batch = one epoch); the crops
    are cut from the canvases on the device, inside the step (``data.crops: canvas``)."""
    return ["data.name=scenes", "data.path=null", "data.crops=canvas", "data.scenes_size=256",
            f"data.scenes_num_images={batch}", "data.num_workers=0", f"train.batch_size={batch}", "train.precision=bf16", f"train.device={device}",
            f"train.compile={str(compile_).lower()}", "train.epochs=1000", *extra]


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def peak_case(args: argparse.Namespace, result: dict, save) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from step_time import matmul_peak_tflops

    device = torch.device(args.device)
    size = args.peak_size or (8192 if device.type == "cuda" else 1024)
    result.update(torch=torch.__version__, cuda=torch.version.cuda, matmul_size=size,
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    save()
    # The best of 3 runs of 50 products (~70 ms each on an H200): the first lets the clocks rise.
    runs, repeats = (3, 50) if device.type == "cuda" else (1, 3)
    # 4 significant digits: a CPU without bf16 units manages a few GFLOP/s, which 1 decimal of TFLOP/s makes 0
    result["peak_tflops"] = float(f"{max(matmul_peak_tflops(device, size, repeats) for _ in range(runs)):.4g}")


def train_case(args: argparse.Namespace, method: str, compile_: bool, result: dict, save) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(HERE))
    from step_time import fixed_batch, make_trainer, sync, time_steps, time_views

    start = time.perf_counter()
    trainer = make_trainer(CONFIGS[method], case_overrides(args.device, args.batch, compile_, args.set))
    batch = fixed_batch(trainer)
    device = trainer.device
    result.update(config=CONFIGS[method], device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                  else "cpu", build_s=round(time.perf_counter() - start, 2), warmup_steps_s=[])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup):  # with compile, the first steps compile (students, teacher, shapes)
        result["stage"] = f"warm-up step {i + 1} of {args.warmup}"
        save()
        result["warmup_steps_s"].append(round(time_steps(trainer, batch, 1, warmup=0)[0], 3))
    result["stage"] = f"{args.steps} timed steps"
    save()
    times = time_steps(trainer, batch, args.steps, warmup=0)
    step = statistics.median(times)
    warmup = sum(result["warmup_steps_s"])
    result.update(step_s=round(step, 5), step_s_min=round(min(times), 5), images_per_sec=round(args.batch / step, 1),
                  warmup_s=round(warmup, 2))
    if compile_:
        result["compile_s"] = round(warmup - args.warmup * step, 2)
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    save()
    if not compile_:
        result["stage"] = "FLOP count"
        save()
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batch, epoch=1)
        sync(device)
        result["step_flop"] = counter.get_total_flops()
        result["stage"] = "views"
        save()
        views = statistics.median(time_views(trainer, batch, max(args.steps, 3)))
        result.update(views_s=round(views, 5), views_ms_per_image=round(1e3 * views / args.batch, 4),
                      views_over_step=round(views / step, 3))


def run_child(args: argparse.Namespace) -> int:
    path = Path(args.case_out)
    name = args.case
    result: dict = {"case": name, "stage": "start", "batch": args.batch, "device": args.device}
    if name != "peak":
        method, mode = name.split(":")
        result.update(method=method, compile=mode == "compile")
    save = lambda: write_json(path, result)  # noqa: E731
    save()
    try:
        if name == "peak":
            peak_case(args, result, save)
        else:
            train_case(args, result["method"], result["compile"], result, save)
    except Exception as error:  # recorded; the parent goes on with the next case
        traceback.print_exc()
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
        save()
        return 1
    result["stage"] = "done"
    save()
    return 0


# ------------------------------------------------------------------------------ the parent
def run_case(args: argparse.Namespace, name: str, limit: float, work: Path) -> dict:
    out = work / f"case_{name.replace(':', '_')}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--case-out", str(out),
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--peak-size", str(args.peak_size)]
    for item in args.set:
        cmd += ["--set", item]
    print(f"[gpu_bench] {name}: limit {limit:.0f} s", flush=True)
    start = time.monotonic()
    # A session of its own: a timeout ends the child and its compile workers together.
    child = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        rc = child.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        rc, timed_out = child.wait(), True
    finally:  # this process stopped (SIGTERM, Ctrl-C): the child's session goes too
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    elapsed = time.monotonic() - start
    result = json.loads(out.read_text()) if out.is_file() else {"case": name, "stage": "start"}
    result["wall_s"] = round(elapsed, 1)
    if timed_out:
        stage = result.get("stage", "start")
        if result.get("compile") and stage.startswith("warm-up"):
            result["error"] = (f"compile exceeded its budget: stopped after {elapsed:.0f} s (limit {limit:.0f} s, "
                               f"compile budget {args.compile_budget:.0f} s) during {stage}")
            result["compile_over_budget"] = True
        else:
            result["error"] = f"timed out after {elapsed:.0f} s (limit {limit:.0f} s) during {stage}"
    elif rc != 0 and "error" not in result:
        result["error"] = f"exit status {rc} during {result.get('stage')}"
    print(f"[gpu_bench] {name}: {'ok' if 'error' not in result else result['error']} ({elapsed:.1f} s)", flush=True)
    return result


def combine(peak: dict, cases: list[dict]) -> None:
    """FLOPs of the compiled cases from the eager ones; achieved TFLOP/s and MFU."""
    flop = {c["method"]: c["step_flop"] for c in cases if not c.get("compile") and "step_flop" in c}
    for case in cases:
        if "step_flop" not in case and case.get("method") in flop:
            case["step_flop"] = flop[case["method"]]
        if "step_flop" in case and "step_s" in case:
            achieved = case["step_flop"] / case["step_s"] / 1e12
            case["step_tflop"] = round(case["step_flop"] / 1e12, 6)
            case["achieved_tflops"] = round(achieved, 4)
            if peak.get("peak_tflops"):
                case["mfu"] = round(achieved / peak["peak_tflops"], 4)


def fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def bench_markdown(bench: dict) -> str:
    peak = bench.get("peak", {})
    lines = [
        f"Device: {peak.get('device_name', '?')}; torch {peak.get('torch', '?')} (CUDA {peak.get('cuda')}); "
        f"measured bf16 matmul peak ({peak.get('matmul_size', '?')}^3): {fmt(peak.get('peak_tflops'), '.4g')} TFLOP/s"
        + (f" ({peak['error']})" if "error" in peak else "") + ".",
        f"ViT-S/16, 2 x 224 + 10 x 96 px, K = 65536, bf16, batch {bench['batch']}; median of {bench['steps']} "
        f"steps after {bench['warmup']} warm-up steps"
        + (f"; overrides: {' '.join(bench['overrides'])}" if bench.get("overrides") else "") + ".",
        "",
        "| method | compile | images/s | step (ms) | TFLOP / step | TFLOP/s | MFU | warm-up (s) | compile (s) "
        "| peak mem (GiB) | views (ms / image) | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in bench["cases"]:
        step_ms = c["step_s"] * 1e3 if "step_s" in c else None
        lines.append(
            f"| {c.get('method')} | {'on' if c.get('compile') else 'off'} | {fmt(c.get('images_per_sec'))} "
            f"| {fmt(step_ms, '.1f')} | {fmt(c.get('step_tflop'), '.4g')} | {fmt(c.get('achieved_tflops'), '.4g')} "
            f"| {fmt(c.get('mfu'), '.3f')} | {fmt(c.get('warmup_s'))} | {fmt(c.get('compile_s'))} "
            f"| {fmt(c.get('peak_mem_gib'))} | {fmt(c.get('views_ms_per_image'))} | {c.get('error', 'ok')} |")
    return "\n".join(lines) + "\n"


def write_bench(args: argparse.Namespace, out: Path, results: dict[str, dict]) -> dict:
    """gpu_bench.json and gpu_bench.md of the cases run so far (written after each one)."""
    peak = results.get("peak", {"error": "not run"})
    cases = []
    for name, case in results.items():
        if name != "peak":
            method, mode = name.split(":")
            cases.append({"method": method, "compile": mode == "compile", **case})
    combine(peak, cases)
    bench = {"device": args.device, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "overrides": args.set,
             "budgets_s": {"case": args.case_budget, "compile": args.compile_budget, "total": args.budget},
             "peak": peak, "cases": cases}
    write_json(out / "gpu_bench.json", bench)
    (out / "gpu_bench.md").write_text(bench_markdown(bench))
    return bench


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop the running case too
    deadline = time.monotonic() + args.budget
    names = ["peak"] + [f"{m}:{mode}" for mode in args.compile for m in args.methods]
    results: dict[str, dict] = {}
    for i, name in enumerate(names):
        left = deadline - time.monotonic()
        limit = 120.0 if name == "peak" else args.case_budget + (args.compile_budget if name.endswith(":compile") else 0)
        if left < 20:
            results[name] = {"case": name, "error": f"skipped: the overall budget ({args.budget:.0f} s) was spent"}
        else:  # at most a fair share of what is left, so that every case gets its turn
            results[name] = run_case(args, name, min(limit, left / (len(names) - i)), out)
        bench = write_bench(args, out, results)
    print(bench_markdown(bench), flush=True)
    return 0 if all("error" not in c for c in [bench["peak"], *bench["cases"]]) else 1


# ------------------------------------------------------- gpu_check.sh: missing packages, summary
def missing_requirements(lock: Path = ROOT / "requirements.lock", skip: tuple[str, ...] = ("torch",)) -> list[str]:
    """The pinned requirements of ``lock`` whose module this interpreter cannot find."""
    missing = []
    for line in lock.read_text().splitlines():
        spec = line.split("#")[0].strip()
        if not spec:
            continue
        name = spec.split("==")[0].strip()
        if name not in skip and find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            missing.append(spec)
    return missing


def read_phases(path: Path) -> list[dict]:
    """gpu_check.sh's phases.tsv: name, exit status, seconds, limit, note (one line each)."""
    phases = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
        rc = int(rc)
        phases.append({"phase": name, "ok": rc == 0, "exit_status": rc, "timed_out": rc in (124, 137),
                       "seconds": int(seconds), "limit_s": int(limit), "note": note})
    return phases


def read_junit(path: Path) -> dict | None:
    if not path.is_file():
        return None
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome})
    return {**counts, "cases": cases}


def check_report(work: Path, out: Path) -> None:
    """gpu_check.json and gpu_check.md from the phases, the cuda tests and the benchmark."""
    phases = read_phases(work / "phases.tsv")
    tests = read_junit(work / "pytest_cuda.xml")
    bench_path = work / "bench" / "gpu_bench.json"
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    # On a GPU no cuda test is skipped: a skip means that torch saw no device.
    all_ran = tests is not None and tests["tests"] > 0 and tests["skipped"] == 0
    report = {"ok": bool(phases) and all(p["ok"] for p in phases) and all_ran, "phases": phases,
              "cuda_tests": tests, "bench": bench}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", report)
    lines = ["# GPU check (benchmarks/gpu_check.sh)", "", f"Overall: {'ok' if report['ok'] else 'NOT OK'}.", "",
             "| phase | status | seconds (limit) | note |",
             "|---|---|---:|---|"]
    for p in phases:
        status = "ok" if p["ok"] else ("TIMED OUT" if p["timed_out"] else f"FAILED ({p['exit_status']})")
        lines.append(f"| {p['phase']} | {status} | {p['seconds']} ({p['limit_s']}) | {p['note']} |")
    lines += ["", "## Tests marked cuda", ""]
    if tests is None:
        lines.append("No result (the phase did not run or wrote no report).")
    else:
        lines.append(f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped" + (" (torch saw no GPU)." if tests["skipped"] else "."))
        lines += [f"- {c['outcome']}: {c['test']}" for c in tests["cases"] if c["outcome"] != "passed"]
    lines += ["", "## Throughput and MFU", ""]
    lines.append(bench_markdown(bench) if bench else "No result (the benchmark did not run or wrote no report).")
    (out / "gpu_check.md").write_text("\n".join(lines).rstrip() + "\n")


# ----------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; --quick 10)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5; --quick 3)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["udi", "dino"])
    parser.add_argument("--compile", type=lambda s: ["compile" if m == "on" else "eager" for m in s.split(",")],
                        default=["eager", "compile"], help="off,on (default), off or on")
    parser.add_argument("--case-budget", type=float, default=None, help="s per case (default 180; --quick 90)")
    parser.add_argument("--compile-budget", type=float, default=None,
                        help="s more for a compiled case (default 300; --quick 150)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="s for all the cases together")
    parser.add_argument("--peak-size", type=int, default=0, help="matmul size of the peak (0: 8192 on cuda, 1024 on cpu)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller budgets (gpu_check.sh)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--out", default="runs/gpu_bench")
    parser.add_argument("--report", metavar="WORK", help="write gpu_check.json/.md from gpu_check.sh's WORK folder")
    parser.add_argument("--missing-deps", action="store_true", help="print the requirements this python lacks")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--case-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"steps": 10, "warmup": 3, "case_budget": 90.0, "compile_budget": 150.0}
    full = {"steps": 30, "warmup": 5, "case_budget": 180.0, "compile_budget": 300.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.missing_deps:
        print(" ".join(missing_requirements()))
        return 0
    if args.report:
        check_report(Path(args.report), Path(args.out))
        return 0
    if args.case:
        sys.path.insert(0, str(ROOT))  # the udi package without installing it (a bare GPU machine)
        return run_child(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
