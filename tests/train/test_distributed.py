"""DDP on the CPU with two processes (gloo): processes stay in sync, centres are averaged,
Sinkhorn balances over the rows of all processes."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from udi.config import load_config
from udi.losses.distill import sinkhorn_probs, update_center
from udi.train.distributed import init_distributed, shutdown
from udi.train.loop import Trainer

from .conftest import TINY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SINKHORN_LOGITS = torch.randn(7, 4, generator=torch.Generator().manual_seed(0)) * 2
SINKHORN_ROWS = (slice(0, 3), slice(3, 7))


def _worker(rank, world, port, out_dir, result_dir, centering="center"):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    # Centre averaging in isolation: rank r contributes logits r+1 (and r+1 rows of them).
    center = torch.zeros(1, 3)
    update_center(center, torch.full((rank + 1, 3), float(rank + 1)), momentum=0.5)
    # Sinkhorn balance over the rows of both processes (rank r holds rows SINKHORN_ROWS[r]).
    balanced = sinkhorn_probs(SINKHORN_LOGITS[SINKHORN_ROWS[rank]], 0.1, iters=3)
    cfg = load_config(None, TINY + ["train.max_steps=4", f"loss.centering={centering}"])
    trainer = Trainer(cfg, out_dir, info)
    trainer.run()
    torch.save(
        {"student": trainer.student.state_dict(), "teacher": trainer.teacher.state_dict(),
         "loss": trainer.loss_fn.state_dict(), "center": center, "balanced": balanced},
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    shutdown()


@pytest.mark.parametrize("centering", ["center", "sinkhorn"])
def test_two_processes_stay_in_sync_and_average_centres(tmp_path, centering):
    out_dir, result_dir = tmp_path / "run", tmp_path / "results"
    result_dir.mkdir()
    mp.start_processes(_worker, args=(2, free_port(), str(out_dir), str(result_dir), centering), nprocs=2,
                       start_method="spawn")
    states = [torch.load(result_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for part in ("student", "teacher", "loss"):
        for key, value in states[0][part].items():
            assert torch.equal(value, states[1][part][key]), f"{part}.{key} differs between processes"
    # weighted over all rows of all processes: (1*1 + 2*2) / 3 rows, times (1 - momentum)
    assert torch.allclose(states[0]["center"], torch.full((1, 3), 0.5 * 5 / 3))
    # Sinkhorn over 3 + 4 rows in two processes == over all 7 rows in one.
    whole = sinkhorn_probs(SINKHORN_LOGITS, 0.1, iters=3)
    for rank in range(2):
        assert torch.allclose(states[rank]["balanced"], whole[SINKHORN_ROWS[rank]], atol=1e-6)
    assert (out_dir / "checkpoint.pt").exists() and (out_dir / "log.jsonl").exists()
    # Each process saw different images, so the teacher outputs differ per process; equal
    # centres after 4 steps therefore show the all-reduce (Sinkhorn leaves them at zero).
    assert (centering == "center") != torch.equal(states[0]["loss"]["center_cls"], torch.zeros_like(states[0]["loss"]["center_cls"]))


def test_torchrun_cli_two_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
               "-m", "udi", "pretrain", "--out", str(tmp_path), *TINY, "train.max_steps=2"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = [line for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2  # rank 0 logs alone
    assert '"step": 2' in result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            found += [int(c) for c in handle.read().split()]
    return found


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank`` (its environment says RANK=rank)."""
    for child in _children(launcher):
        with open(f"/proc/{child}/environ", "rb") as handle:
            if f"RANK={rank}".encode() in handle.read().split(b"\0"):
                return child
    raise AssertionError(f"no rank {rank} under {launcher}")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to find the ranks")
def test_a_hung_rank_ends_the_run_after_dist_timeout_and_it_resumes_exactly(tmp_path):
    """Before: the survivor waited silently for the 30-minute default."""
    import signal
    import time

    from .test_pretrain_e2e import assert_same_state, wait_for_log_lines

    def launch(out, *extra):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                   str(free_port()), "-m", "udi", "pretrain", "--out", str(out), *TINY, "train.max_steps=12",
                   "train.checkpoint_every=1", "train.dist_timeout=4", *extra]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})

    full, hung = tmp_path / "full", tmp_path / "hung"
    assert launch(full).wait(timeout=300) == 0
    launcher = launch(hung)
    wait_for_log_lines(hung, 3)
    survivor, stuck = _rank_pid(launcher.pid, 0), _rank_pid(launcher.pid, 1)
    os.kill(stuck, signal.SIGSTOP)
    start = time.time()
    while os.path.exists(f"/proc/{survivor}") and time.time() - start < 120:
        with open(f"/proc/{survivor}/stat") as handle:
            if handle.read().split(") ")[1].startswith("Z"):  # exited, not yet reaped
                break
        time.sleep(0.1)
    waited = time.time() - start
    os.kill(stuck, signal.SIGKILL)  # torchrun would wait 30 s before it does
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and waited < 60
    assert "got no answer from the others for 4 s (train.dist_timeout)" in " ".join(err.split())
    assert launch(hung).wait(timeout=300) == 0
    assert_same_state(full, hung)
