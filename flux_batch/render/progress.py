"""Progress inside a batch, from the pipeline's step callback.

A FLUX.1-dev-sized image on a CPU takes minutes per step, so a bar that moves once per image
says nothing for a long while. On a terminal the image bar's postfix names the step of the
batch in progress. Off a terminal (a log file, Slurm) a line is logged every
`FLUX_BATCH_PROGRESS_INTERVAL` seconds (30 by default) while a batch renders:
`step k of n, X s/step, ETA for the run`. The line comes from a timer, not from the steps, so
it comes even when one step outlasts the interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger("flux_batch")

DEFAULT_INTERVAL = 30.0


def interval() -> float:
    """Seconds between progress lines off a terminal."""
    return float(os.environ.get("FLUX_BATCH_PROGRESS_INTERVAL") or DEFAULT_INTERVAL)


class StepProgress:
    """Counts item-steps (a step of a batch of B items is B of them) to tell the step of the
    batch in progress and the time left for the run."""

    def __init__(
        self,
        bar,
        item_steps: int,
        enabled: bool,
        label: str = "",
        failed: Callable[[], int] = lambda: 0,
        every: float | None = None,
    ):
        self.bar = bar  # the image bar (tqdm): disabled off a terminal
        self.item_steps = item_steps  # of the whole run (this process's items)
        self.enabled = enabled
        self.label = f"{label}: " if label else ""
        self.failed = failed
        self.every = interval() if every is None else every
        self.started = time.monotonic()
        self.done = 0  # item-steps of finished steps
        self.batch: tuple[int, int, float] | None = None  # (items, steps, start) in progress
        self.step_count = 0
        self._stop = threading.Event()
        self._timer = None
        if enabled and bar.disable:  # off a terminal: lines from a timer
            self._timer = threading.Thread(target=self._tick, name="flux-batch-progress", daemon=True)
            self._timer.start()

    def begin(self, items: int, steps: int) -> None:
        self.batch = (items, steps, time.monotonic())
        self.step_count = 0

    def step(self, completed: int) -> None:
        """After the `completed`-th step (1-based) of the batch in progress."""
        if self.batch is None:
            return
        self.step_count = completed
        self.done += self.batch[0]
        if self.enabled and not self.bar.disable:
            self.bar.set_postfix(failed=self.failed(), step=f"{completed}/{self.batch[1]}")

    def end(self) -> None:
        self.batch = None

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()

    def line(self) -> str | None:
        """The progress line for the batch in progress, or None between batches."""
        batch = self.batch
        if batch is None:
            return None
        items, steps, began = batch
        now = time.monotonic()
        k = self.step_count
        per_step = f"{(now - began) / k:.1f} s/step" if k else f"{now - began:.0f} s into the first step"
        rate = self.done / (now - self.started) if self.done else 0.0
        eta = _duration((self.item_steps - self.done) / rate) if rate else "unknown"
        of_batch = f" (a batch of {items})" if items > 1 else ""
        return f"{self.label}step {k} of {steps}{of_batch}, {per_step}, ETA for the run {eta}"

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            if (text := self.line()) is not None:
                log.info("%s", text)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
