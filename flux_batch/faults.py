"""Crash points for fault-injection tests.

`FLUX_BATCH_CRASH=<point>:<n>` kills the process with SIGKILL the n-th time it reaches
`<point>`, so tests can stop a run exactly where a real crash would hurt most. Unset (the
normal case), every crash point is a dictionary lookup and nothing else.
"""
from __future__ import annotations

import os
import signal

POINTS = ("model_loaded", "mid_denoise", "image_written", "manifest_appended")
_spec = os.environ.get("FLUX_BATCH_CRASH", "")
_point, _, _count = _spec.partition(":")
_hits = 0


def crash_point(name: str) -> None:
    global _hits
    if name != _point:
        return
    _hits += 1
    if _hits >= int(_count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
