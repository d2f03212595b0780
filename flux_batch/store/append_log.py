"""JSONL logs that grow by whole, fsynced lines: the manifest and the errors log."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from flux_batch import faults


def whole_lines_end(f) -> int:
    """Offset just past the last newline of an open binary file: where a torn tail starts."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0


class AppendLog:
    """A JSONL file that grows one fsynced line at a time, and only by whole lines: a torn
    tail left by a crash is cut off when it is opened, and a line whose write fails (a full
    disk) is cut back off, so the next line never glues onto a partial one."""

    def __init__(self, path: Path, fault_point: str = ""):
        self.path = path
        self.fault_point = fault_point
        self._file = None
        self._end = 0  # offset just past the last whole line

    def append(self, record: dict[str, Any]) -> bytes:
        """Append one record; the line written, as bytes."""
        return self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> bytes:
        """Append records in one write and one fsync (a kill may leave some of them, whole,
        and a torn last one); the lines written, as bytes."""
        if self._file is None:
            self._open()
        line = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
        try:
            if faults.write(self._file, line, self.fault_point) != len(line):
                raise OSError(errno.EIO, f"short write to {self.path}")
            os.fsync(self._file.fileno())
        except BaseException:  # an OSError, or a second Ctrl-C mid-write
            self._cut_back()
            raise
        self._end += len(line)
        return line

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._file.fileno(), self._end)
        except OSError:  # then the next append reopens the file, which cuts the partial line
            self.close()

    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)  # unbuffered: nothing left to flush later
        with open(self.path, "rb") as f:
            self._end = whole_lines_end(f)
        if self._end != os.fstat(self._file.fileno()).st_size:
            os.ftruncate(self._file.fileno(), self._end)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
