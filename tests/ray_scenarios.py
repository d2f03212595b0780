"""engine=ray scenarios, each run inside a loopback-only network namespace by test_ray_engine.py:

    unshare -n sh -c 'ip link set lo up && exec python tests/ray_scenarios.py NAME DIR'

Ray talks over the machine's network address; in the namespace it finds only 127.0.0.1, so a
test never sends a packet off the machine. A scenario starts what it needs (a two-node cluster
through Ray's own test harness, `ray.cluster_utils.Cluster`), runs the real `flux-batch` script
against it, does what the scenario says mid-run (removes a node, kills the driver), shuts down
what it started and writes what happened to DIR/result.json for the test to check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "flux-batch")
# 12 items of the demo model, small enough to render in seconds, one item per batch
ARGS = ["model=demo", "num_images=2", "runtime.progress=false", "batch_size=1"]


def flux_batch(out: Path, *args: str, env: dict | None = None, timeout: float = 600) -> dict:
    result = subprocess.run(
        [SCRIPT, *ARGS, f"output.dir={out}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def started(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [SCRIPT, *ARGS, f"output.dir={out}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def lines(out: Path) -> int:
    try:
        return len((out / "metadata.jsonl").read_text().splitlines())
    except OSError:
        return 0


def wait_for_lines(out: Path, at_least: int, process: subprocess.Popen, timeout: float = 500) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (n := lines(out)) >= at_least:
            return n
        time.sleep(0.05)
    raise SystemExit(f"the run reached {lines(out)} records, not {at_least} (exit {process.poll()})")


def finished(process: subprocess.Popen, timeout: float = 600) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    return {"code": process.returncode, "stdout": stdout, "stderr": stderr}


def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    return cluster, worker


def local(work: Path) -> dict:
    """A Ray started inside the process; then the same command again."""
    first = flux_batch(work / "run", "engine=ray")
    return {"first": first, "again": flux_batch(work / "run", "engine=ray")}


def cluster(work: Path) -> dict:
    """Two nodes, two workers, joined by engine.address."""
    ray_cluster, _ = two_nodes()
    try:
        args = ("engine=ray", f"engine.address={ray_cluster.address}", "engine.workers=2")
        return {"first": flux_batch(work / "run", *args), "again": flux_batch(work / "run", *args)}
    finally:
        ray_cluster.shutdown()


def kills(work: Path) -> dict:
    """Every render worker killed (SIGKILL) as it writes its third image: before the record
    reaches the driver, so Ray restarts the actor and runs the batch again."""
    return {"first": flux_batch(work / "run", "engine=ray", env={"FLUX_BATCH_CRASH": "image_written:3"})}


def node_lost(work: Path) -> dict:
    """The second node removed once a few items are in."""
    ray_cluster, worker = two_nodes()
    try:
        args = ("engine=ray", f"engine.address={ray_cluster.address}", "engine.workers=2", "sampler.steps=8")
        process = started(work / "run", *args)
        at_removal = wait_for_lines(work / "run", 2, process)
        ray_cluster.remove_node(worker)
        return {"first": finished(process), "at_removal": at_removal}
    finally:
        ray_cluster.shutdown()


def driver_killed(work: Path) -> dict:
    """The driver SIGKILLed mid-run; the same command again."""
    ray_cluster, _ = two_nodes()
    try:
        args = ("engine=ray", f"engine.address={ray_cluster.address}", "sampler.steps=8")
        process = started(work / "run", *args)
        at_kill = wait_for_lines(work / "run", 3, process)
        process.send_signal(signal.SIGKILL)
        finished(process)
        return {"at_kill": at_kill, "again": flux_batch(work / "run", *args)}
    finally:
        ray_cluster.shutdown()


def stall(work: Path) -> dict:
    """The render worker stopped (SIGSTOP) in its first denoising step: the watchdog ends the
    run; the same command without the fault resumes."""
    first = flux_batch(
        work / "run", "engine=ray", "engine.stall_timeout=15", env={"FLUX_BATCH_CRASH": "mid_denoise:1:stop"}
    )
    return {"first": first, "again": flux_batch(work / "run", "engine=ray")}


def sweep(work: Path) -> dict:
    """Two jobs of a sweep on one Ray, one after the other in one process."""
    result = subprocess.run(
        [SCRIPT, "-m", *ARGS, "seed=0,1", "engine=ray", "hydra.sweep.dir=" + str(work / "sweep")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
    )
    return {"first": {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}}


def unreachable(work: Path) -> dict:
    started_at = time.monotonic()
    first = flux_batch(work / "run", "engine=ray", "engine.address=127.0.0.1:1")
    return {"first": first, "seconds": time.monotonic() - started_at}


def no_token(work: Path) -> dict:
    """A cluster that wants token auth, joined without the token."""
    import secrets

    token = secrets.token_hex(16)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # the cluster's, before Ray loads
    ray_cluster, _ = two_nodes()
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
        started_at = time.monotonic()
        result = subprocess.run(
            [
                SCRIPT,
                *ARGS,
                f"output.dir={work / 'run'}",
                "engine=ray",
                f"engine.address={ray_cluster.address}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        first = {"code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
        return {"first": first, "seconds": time.monotonic() - started_at}
    finally:
        ray_cluster.shutdown()


if __name__ == "__main__":
    name, folder = sys.argv[1], Path(sys.argv[2])
    os.environ["HOME"] = str(folder / "home")  # Ray keeps its token under ~/.ray
    (folder / "home").mkdir(parents=True, exist_ok=True)
    outcome = globals()[name](folder)
    (folder / "result.json").write_text(json.dumps(outcome))
