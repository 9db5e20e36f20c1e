"""Stopping cleanly on SIGTERM / SIGINT: finish the step, write a checkpoint, exit with a message.

SLURM and most schedulers send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT.
Without a handler the steps since the last checkpoint (up to ``train.checkpoint_every - 1``) are
lost. The training loop reads ``StopSignals.signum`` after each step (all processes agree
through the step's all-reduce) and raises ``TrainingStopped`` once the checkpoint is written.
"""

from __future__ import annotations

import signal
import threading


class TrainingStopped(Exception):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; ``signum`` is the signal
    (None: another process of the run received it)."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """``with StopSignals() as stop:`` the first SIGTERM or SIGINT sets ``stop.signum`` and
    restores the previous handlers, so that a second one acts at once. Signals are only
    delivered to the main thread: elsewhere this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a scheduler's SIGTERM reaches the loader workers too; the
    main process stops them itself after its checkpoint (torch's workers already ignore SIGINT)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
