"""Errors a user can act on. Each carries the exit status the CLI ends with.

They are printed as their message alone, never as a traceback.
"""

from __future__ import annotations

import errno
import os

EXIT_FAILED = 1  # items failed beyond max_errors, or an I/O error stopped the run
EXIT_BAD_INPUT = 2  # prompt file or config refused; nothing was written
EXIT_LOCKED = 75  # another process holds the run directory (EX_TEMPFAIL: try later)


class FluxBatchError(Exception):
    exit_code = EXIT_FAILED


class ConfigError(FluxBatchError):
    exit_code = EXIT_BAD_INPUT


class PromptFileError(FluxBatchError):
    """One or more `FILE:LINE: reason` problems in a prompt file."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[str], limit: int = 50):
        self.problems = problems
        shown = problems[:limit]
        if len(problems) > limit:
            shown.append(f"... and {len(problems) - limit} more problems")
        super().__init__("\n".join(shown))


class ModelFileError(FluxBatchError):
    """A model file is missing, unreadable, or of a format we refuse to read."""

    exit_code = EXIT_BAD_INPUT


class RunDirError(FluxBatchError):
    """The run directory belongs to other settings, or its manifest is damaged."""

    exit_code = EXIT_BAD_INPUT


class LockedError(FluxBatchError):
    exit_code = EXIT_LOCKED


class TooManyErrors(FluxBatchError):
    exit_code = EXIT_FAILED


class WriteError(FluxBatchError):
    """Writing to the run directory failed (a full disk, a lost mount): the run stops."""

    exit_code = EXIT_FAILED


# A disk that fails under a run (full, over quota, failing) fails the run, at its start as at any
# other point: exit 1, and the same command resumes once there is room. Other errors opening a
# run directory (no permission, not a folder, a read-only mount) are a place the user must change.
DISK_FAILURES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


def write_failed(run_dir: str | os.PathLike, e: OSError) -> WriteError:
    """A failed write (a full disk, a lost mount) as one line that says nothing was lost."""
    where = f" ({e.filename})" if e.filename else ""
    return WriteError(
        f"cannot write to {run_dir}: {e.strerror or e}{where}; the run stopped and everything "
        "listed in the manifest is intact: fix the cause and run the same command to resume"
    )


def cannot_use(run_dir: str | os.PathLike, e: OSError) -> FluxBatchError:
    """An OSError opening or preparing a run directory: a failed disk, or a refused place."""
    if e.errno in DISK_FAILURES:
        return write_failed(run_dir, e)
    return RunDirError(f"cannot use the run directory {run_dir}: {e.strerror or e}")
