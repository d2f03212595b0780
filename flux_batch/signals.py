"""Stopping a run cleanly: SIGINT, SIGTERM and Slurm's SIGUSR2, and the requeue hand-on.

While rendering, the first signal asks the current batch to stop (its images are dropped) and
the run to end with its manifest whole; outside rendering, or on a second signal, the run stops
at once through `Interrupted`, and the CLI exits 128 + signum.

Preemption on Slurm: Slurm sends SIGUSR2 before a job's time limit and, where the cluster sets
preempt_send_user_signal, when it preempts the job (submitit asks for the signal with `--signal`).
After the clean stop, `hand_on` gives the signal to the handler installed before the run: under
submitit (Hydra's submitit launchers) that one checkpoints the job and requeues it, and the
requeued job resumes the run like any rerun. Without such a handler the run just exits.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("flux_batch")


class Interrupted(BaseException):
    """SIGINT/SIGTERM: the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While rendering, the first SIGINT/SIGTERM asks the current batch to stop (its images
    are dropped) and the run to end; outside rendering, or on a second signal, stop at once."""

    def __init__(self):
        self.signum: int | None = None
        self.rendering = False
        self._previous = {}

    def __enter__(self):
        # SIGUSR2: Slurm's warning before preemption or the time limit
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if not self.rendering or self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        log.warning(
            "%s: finishing the manifest and stopping (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def requested(self) -> bool:
        return self.signum is not None


def hand_on(signum: int) -> None:
    """Call the Python handler installed for `signum` outside the run, if there is one."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
