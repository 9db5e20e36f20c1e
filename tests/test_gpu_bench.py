"""benchmarks/gpu_bench.py (the measurements of benchmarks/gpu_check.sh): its summary, the
requirements check and, on the CPU, one small run end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bench.py"
spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
gpu_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bench)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
 skipped="0" tests="3"><testcase classname="tests.train.test_cuda" name="test_a"/><testcase
 classname="tests.train.test_cuda" name="test_b"><failure message="boom"/></testcase><testcase
 classname="tests.data.test_views" name="test_c"/></testsuite></testsuites>"""


def test_missing_requirements_names_only_what_cannot_be_imported(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\ntorch==9.9\nnumpy==2.4.6\npyyaml==6.0.3\nno-such-package-xyz==1.0\n")
    assert gpu_bench.missing_requirements(lock) == ["no-such-package-xyz==1.0"]


def test_check_report_records_phases_tests_and_bench(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "bench").mkdir(parents=True)
    (work / "phases.tsv").write_text("env\t0\t3\t300\texisting python\ntests\t1\t40\t150\tpytest -m cuda\n"
                                     "bench\t124\t420\t420\tgpu_bench.py --quick\n")
    (work / "pytest_cuda.xml").write_text(JUNIT)
    peak = {"device_name": "GPU", "torch": "2.x", "cuda": "13", "matmul_size": 8192, "peak_tflops": 800.0}
    cases = [{"method": "udi", "compile": False, "step_s": 0.05, "images_per_sec": 1280.0, "step_flop": 8e12},
             {"method": "udi", "compile": True, "step_s": 0.04, "images_per_sec": 1600.0}]
    gpu_bench.combine(peak, cases)
    assert cases[1]["step_flop"] == 8e12  # the compiled case gets the eager count
    assert cases[0]["achieved_tflops"] == 160.0 and cases[0]["mfu"] == 0.2 and cases[1]["mfu"] == 0.25
    bench = {"batch": 64, "steps": 10, "warmup": 3, "peak": peak, "cases": cases}
    (work / "bench" / "gpu_bench.json").write_text(json.dumps(bench))
    gpu_bench.check_report(work, out)
    report = json.loads((out / "gpu_check.json").read_text())
    assert not report["ok"]
    assert [(p["phase"], p["ok"], p["timed_out"]) for p in report["phases"]] == [
        ("env", True, False), ("tests", False, False), ("bench", False, True)]
    tests = report["cuda_tests"]
    assert (tests["tests"], tests["passed"], tests["failures"]) == (3, 2, 1)
    assert {"test": "tests.train.test_cuda::test_b", "outcome": "failure"} in tests["cases"]
    md = (out / "gpu_check.md").read_text()
    assert "| bench | TIMED OUT |" in md and "- failure: tests.train.test_cuda::test_b" in md
    assert "| udi | on | 1600.0 | 40.0 | 8 | 200 | 0.250 |" in md


def test_check_report_without_any_result(tmp_path):
    gpu_bench.check_report(tmp_path / "nothing", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report == {"ok": False, "phases": [], "cuda_tests": None, "bench": None}
    assert "No result" in (tmp_path / "out" / "gpu_check.md").read_text()


TINY = ["model.arch=vit_nano", "model.patch_size=8", "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32",
        "views.global_size=32", "views.local_size=16", "views.n_local=2", "views.global_window=2",
        "views.local_window=1", "data.scenes_size=32"]


@pytest.mark.slow  # three processes (parent, peak, one case): mostly start-up
def test_a_small_cpu_run_writes_images_per_second_and_mfu(tmp_path):
    args = ["--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "1", "--methods", "udi",
            "--compile", "off", "--out", str(tmp_path)]
    subprocess.run([sys.executable, str(SCRIPT), *args, *(f"--set={s}" for s in TINY)], check=True, timeout=300)
    bench = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert bench["peak"]["peak_tflops"] > 0 and bench["overrides"] == TINY
    (case,) = bench["cases"]
    assert "error" not in case and (case["method"], case["compile"]) == ("udi", False)
    assert case["images_per_sec"] > 0 and case["step_flop"] > 0 and 0 < case["mfu"] and case["views_s"] > 0
    assert "| udi | off |" in (tmp_path / "gpu_bench.md").read_text()
