"""Preemption on Slurm: stop cleanly, then let the job scheduler's own handler requeue the job.

Slurm sends SIGUSR2 before a job's time limit and, where the cluster sets
preempt_send_user_signal, when it preempts the job (submitit asks for the signal with `--signal`).
flux-batch treats it like SIGTERM: the current batch is dropped and the manifest left whole.
Then the handler that was installed before the run gets the signal: under submitit (Hydra's
submitit launchers) that one checkpoints the job and requeues it, and the requeued job resumes
the run like any rerun. Without such a handler the run just exits 128 + signum.
"""
from __future__ import annotations

import signal


def hand_on(signum: int) -> None:
    """Call the Python handler installed for `signum` outside the run, if there is one."""
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
