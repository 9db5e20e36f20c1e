#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU, from a bare copy of the repository, in under 8 minutes
# (GPU_CHECK_BUDGET seconds, default 470, environment included):
#   env    a python whose torch sees the GPU: GPU_PYTHON, .venv-gpu, python3, python (the first
#          that works); else a fresh .venv-gpu with `pip install torch` (PyPI's Linux wheel is the
#          CUDA build), which fails clearly where no package index can be reached;
#   deps   the requirements (requirements.lock) that python lacks: from wheels in .whl/ when there
#          are any (a machine without registries: carry them), else from the package index;
#   tests  the tests marked cuda (pytest -m cuda);
#   bench  benchmarks/gpu_bench.py --quick: images/s and MFU of ViT-S/16 UDI and DINO at 224/96,
#          10 locals, bf16, batch 64, train.compile off and on (each case in a child with its limit);
#   report gpu_check.json and gpu_check.md.
# Outputs go to $OUT if it is set, else runs/gpu_check/: gpu_check.json, gpu_check.md and
# gpu_check.log (all the output). Each phase runs under its own `timeout`; a failed phase is
# recorded and the later ones still run. Arguments are passed on to gpu_bench.py (after --quick):
#
#   bash benchmarks/gpu_check.sh [--steps 20 ...]
# A dry run without a GPU (no install: the env phase fails and is recorded, the others run on the CPU):
#   GPU_CHECK_NO_INSTALL=1 bash benchmarks/gpu_check.sh --device cpu --batch 2 --steps 1 --warmup 1
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
DEST=${OUT:-$REPO/runs/gpu_check}
WORK=$REPO/runs/gpu_check/work
mkdir -p "$DEST" && rm -rf "$WORK" && mkdir -p "$WORK" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

now() { date +%s; }
# limit CAP RESERVE: CAP seconds, or fewer so that RESERVE seconds of the budget are left after.
limit() {
    local cap=$1 left=$((START + BUDGET - $(now) - $2))
    ((left < cap)) && cap=$left
    ((cap < 5)) && cap=5
    echo "$cap"
}
# record PHASE EXIT_STATUS START LIMIT NOTE
record() {
    local note=${5//$'\t'/ }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(($(now) - $3))" "$4" "${note//$'\n'/ }" >>"$WORK/phases.tsv"
    echo "[gpu_check] phase $1: exit status $2 after $(($(now) - $3)) s (limit $4 s): $5"
}
cuda_ok() { timeout -k 5 90 "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

main() {
    echo "[gpu_check] $(date -u +%FT%TZ) in $REPO; outputs in $DEST; budget $BUDGET s"
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1

    # --- env: a python with a CUDA torch
    local t0 rc note T cand PY="" all_ok=0
    t0=$(now) rc=0 note=""
    for cand in ${GPU_PYTHON:-} "$REPO/.venv-gpu/bin/python" python3 python; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if cuda_ok "$cand"; then PY=$(command -v "$cand") note="existing python $PY"; break; fi
    done
    T=$(limit 300 200)
    if [ -z "$PY" ] && [ -n "${GPU_CHECK_NO_INSTALL:-}" ]; then
        rc=1 note="no python whose torch sees CUDA (GPU_CHECK_NO_INSTALL set: no pip install torch)"
    elif [ -z "$PY" ]; then
        echo "[gpu_check] no python whose torch sees CUDA: creating .venv-gpu with pip install torch"
        if timeout -k 10 "$T" bash -c 'python3 -m venv .venv-gpu && .venv-gpu/bin/python -m pip install -q torch'; then
            if cuda_ok .venv-gpu/bin/python; then
                PY=$REPO/.venv-gpu/bin/python note="created .venv-gpu (pip install torch)"
            else
                rc=1 note="torch installed in .venv-gpu, but torch.cuda.is_available() is False (no GPU or driver?)"
            fi
        else
            rc=$? note="no python whose torch sees CUDA, and pip install torch failed (exit $rc; timed out at 124): no package index reachable? Name one with GPU_PYTHON=..."
        fi
    fi
    if [ -n "$PY" ]; then
        note="$note; $(timeout 60 "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' 2>&1 | tail -1)"
    else  # the later phases still run, with a python that has some torch, to record what fails
        for cand in ${GPU_PYTHON:-} "$REPO/.venv-gpu/bin/python" "$REPO/.venv/bin/python" python3 python; do
            command -v "$cand" >/dev/null 2>&1 && timeout 90 "$cand" -c 'import torch' 2>/dev/null && { PY=$(command -v "$cand"); break; }
        done
        PY=${PY:-$(command -v python3 || command -v python)}
        note="$note; the later phases use $PY"
    fi
    record env "$rc" "$t0" "$T" "$note"

    # --- deps: the project's other requirements
    t0=$(now) rc=0
    local missing src wheels=()
    missing=$(timeout 60 "$PY" benchmarks/gpu_bench.py --missing-deps) || missing=""
    T=$(limit 180 150)
    if [ -n "$missing" ]; then
        src="the package index"
        if compgen -G ".whl/*.whl" >/dev/null; then src=".whl/" wheels=(--no-index --find-links .whl); fi
        echo "[gpu_check] installing $missing from $src"
        timeout -k 10 "$T" "$PY" -m pip install -q ${wheels[@]+"${wheels[@]}"} $missing ||
            timeout -k 10 "$T" "$PY" -m pip install -q --break-system-packages ${wheels[@]+"${wheels[@]}"} $missing
        note="installed $missing from $src (exit $?)"
        if ! timeout 120 "$PY" -c 'import udi.train.loop' 2>/dev/null && [ -n "${wheels[*]:-}" ]; then
            # A python that pip may not change: the wheels into a folder of their own, after the rest.
            timeout -k 10 "$T" "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" .whl/*.whl
            note="$note; then every wheel of .whl/ into $WORK/site (exit $?)"
            export PYTHONPATH="$PYTHONPATH:$WORK/site"
        fi
    else
        note="every requirement present"
    fi
    timeout -k 5 120 "$PY" -c 'import udi.train.loop, pytest' || { rc=$? note="$note; import udi.train.loop or pytest fails"; }
    record deps "$rc" "$t0" "$T" "$note"

    # --- tests: those marked cuda
    t0=$(now) T=$(limit 150 220)
    timeout -k 10 "$T" "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml="$WORK/pytest_cuda.xml" tests
    rc=$?
    record tests "$rc" "$t0" "$T" "pytest -m cuda$([ "$rc" = 5 ] && echo ': no tests collected')"

    # --- bench: images/s and MFU (its own budget ends before the phase's limit)
    t0=$(now) T=$(limit 420 25)
    timeout -k 10 "$T" "$PY" benchmarks/gpu_bench.py --quick --budget $((T - 20)) --out "$WORK/bench" "$@"
    rc=$?
    record bench "$rc" "$t0" "$T" "gpu_bench.py --quick --budget $((T - 20)) $*"

    # --- report
    awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$WORK/phases.tsv" || all_ok=1
    if ! timeout 60 "$PY" benchmarks/gpu_bench.py --report "$WORK" --out "$DEST" &&
        ! timeout 60 python3 benchmarks/gpu_bench.py --report "$WORK" --out "$DEST"; then
        echo "[gpu_check] the report failed: the phases were" && cat "$WORK/phases.tsv"
        printf '{"ok": false, "error": "the report could not be written; see gpu_check.log"}\n' >"$DEST/gpu_check.json"
        all_ok=1
    fi
    [ -f "$DEST/gpu_check.md" ] && cat "$DEST/gpu_check.md"
    echo "[gpu_check] done in $(($(now) - START)) s: $DEST/gpu_check.json, gpu_check.md, gpu_check.log"
    return "$all_ok"
}

main "$@" 2>&1 | tee "$DEST/gpu_check.log"
exit "${PIPESTATUS[0]}"
