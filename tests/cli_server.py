"""Runs `flux-batch` many times from one interpreter, for the tests that kill it dozens of times.

Importing torch, diffusers and Hydra costs seconds per process; this server pays it once, then
forks a child per request that runs the same entry point as the installed script
(`flux_batch.cli:main`) with its own argv, working directory, environment and output file.
The parent may SIGKILL a child after a delay, for kills at moments no crash point names.

Protocol: one JSON object per line on stdin
  {"args": [...], "cwd": DIR, "log": FILE, "env": {...}, "kill_after": SECONDS (optional),
   "script": "flux-batch" (optional: or another of SCRIPTS),
   "exact_env": BOOL (optional: env is the whole environment), "err": FILE (optional: stderr apart)}
and one JSON line back per request: {"returncode": N} (negative: killed by signal -N).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback

from flux_batch import cli, driver, faults  # noqa: F401  (imported once, here)
from flux_batch.model import files as models  # noqa: F401  (imported once, here)
from flux_batch.render import renderer  # noqa: F401  (imported once, here)

# isort: split
# flux_batch.cli first: it quiets the libraries' import-time chatter before they are imported
import tqdm  # noqa: F401,E402
import transformers  # noqa: F401,E402
from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig  # noqa: F401,E402

# the console scripts the server runs (pyproject.toml's [project.scripts])
SCRIPTS = {"flux-batch": "flux_batch.cli", "flux-batch-gguf": "flux_batch.gguf.cli"}


def child(request: dict) -> None:
    code = 1
    try:
        os.chdir(request["cwd"])
        if request.get("exact_env"):
            os.environ.clear()
        os.environ.update(request.get("env") or {})
        faults.configure(os.environ.get("FLUX_BATCH_CRASH", ""))
        stdin = os.open(os.devnull, os.O_RDONLY)  # not the server's request pipe
        os.dup2(stdin, 0)
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = out
        if request.get("err"):
            err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        script = request.get("script") or "flux-batch"
        sys.argv = [script, *request["args"]]
        try:
            importlib.import_module(SCRIPTS[script]).main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(request: dict) -> int:
    pid = os.fork()
    if pid == 0:
        child(request)
    deadline = request.get("kill_after")
    if deadline is not None:
        deadline += time.monotonic()
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> None:
    for line in sys.stdin:
        returncode = serve(json.loads(line))
        sys.stdout.write(json.dumps({"returncode": returncode}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
