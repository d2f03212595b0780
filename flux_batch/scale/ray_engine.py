"""engine=ray: the pending items rendered by an actor pool on a Ray cluster (Ray Data).

The driver plans, resumes and owns the manifest exactly as a local run does (session.py); Ray
only distributes. The driver streams the pending items into `.ray/pending.items` in the run
directory (one JSON line each, with the byte offset of each batch in `.ray/pending.offsets`), and a
Ray Dataset of batch numbers (`range`) goes through `map_batches` on an actor pool. Each actor
(`RenderActor`) loads the pipeline once, reads its batch's items from the file, renders them,
writes each image durably as the layout does, and returns the records; the driver appends each
record to the manifest as results stream back, once: a batch Ray runs twice (a retry after an
actor or a node is lost) rewrites the same image files and its records are skipped.

Nothing here holds the items: the files are written a line at a time and read a batch at a
time. The run directory must be one directory that every node mounts; each actor checks a
probe file the driver wrote before it renders.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from flux_batch.config import EngineConfig, FluxBatchConfig
from flux_batch.errors import ConfigError, FluxBatchError
from flux_batch.plan.items import Item, Settings

log = logging.getLogger("flux_batch")

EXTRA = "pip install 'flux-batch[ray]'"
FOLDER = ".ray"  # in the run directory: the pending items and the probe, disposable
ITEMS, OFFSETS = "pending.items", "pending.offsets"
MAX_BLOCKS = 10_000
# a connect attempt waits this long for the cluster's GCS (Ray's default retries for minutes)
CONNECT_WAIT_S = "5"


class StalledError(FluxBatchError):
    """No item finished within engine.stall_timeout."""


def import_ray():
    """Ray, or the one line that names the extra."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", CONNECT_WAIT_S)
    # the driver's progress bar and log say what happens; Ray Data's own would repeat it
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"engine=ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


_joined: list[Any] = []  # the address this process joined: a sweep's jobs share one connection


def connect(engine: EngineConfig):
    """Join the cluster `engine.address` names (or start a Ray inside this process); ConfigError
    in one line when it cannot be reached or refuses us."""
    ray = import_ray()
    address = engine.address
    if ray.is_initialized() and _joined == [address]:
        return ray
    if ray.is_initialized():
        ray.shutdown()
    if address not in (None, "auto"):
        _check_reachable(address)
    try:
        # null is "local": a new Ray, never one found running on the machine (another user's)
        with _ray_log_held():
            ray.init(
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except ConnectionError as e:
        raise ConfigError(
            f"engine.address={address}: cannot join the Ray cluster there ({str(e).splitlines()[0]}); "
            "a cluster with token auth needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            "~/.ray/auth_token) in this process's environment"
        ) from None
    except Exception as e:  # ray.exceptions.AuthenticationError and kin
        if "auth" not in type(e).__name__.lower() and "token" not in str(e).lower():
            raise
        raise ConfigError(
            f"engine.address={address}: the Ray cluster refused us ({str(e).splitlines()[0]}); set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token"
        ) from None
    _joined[:] = [address]
    ray.data.DataContext.get_current().print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


@contextmanager
def _ray_log_held():
    """What Ray's C++ side writes to stderr while it connects (a retried connection logs a
    line a second) held back: dropped when it connects or we say why it could not in one
    line, shown when something else went wrong."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except ConnectionError:
            raise
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"engine.address={address}: no Ray cluster answers there ({e.strerror or e}); start one "
            "with `ray start --head`, or set engine.address=null for a Ray inside this process"
        ) from None


def write_pending(run_dir: Path, items, batch_size: int) -> int:
    """Stream the items into `.ray/pending.items` (a line each) and each batch's byte offset
    into `.ray/pending.offsets`; the number of batches."""
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    offsets = array("q", [0])
    with open(folder / ITEMS, "wb") as out:
        count = 0
        for item in items:
            out.write(json.dumps(_item_fields(item)).encode() + b"\n")
            count += 1
            if count % batch_size == 0:
                offsets.append(out.tell())
        if count % batch_size:
            offsets.append(out.tell())
        out.flush()
        os.fsync(out.fileno())
    with open(folder / OFFSETS, "wb") as out:
        offsets.tofile(out)
        out.flush()
        os.fsync(out.fileno())
    return len(offsets) - 1


def read_batch(run_dir: Path, number: int) -> list[Item]:
    """The items of batch `number` of `.ray/pending.items`."""
    folder = run_dir / FOLDER
    offsets = array("q")
    with open(folder / OFFSETS, "rb") as f:
        f.seek(number * offsets.itemsize)
        offsets.fromfile(f, 2)
    with open(folder / ITEMS, "rb") as f:
        f.seek(offsets[0])
        data = f.read(offsets[1] - offsets[0])
    return [_item_of(json.loads(line)) for line in data.splitlines()]


def _item_fields(item: Item) -> dict:
    """An Item as JSON values (nothing in the run directory is unpickled)."""
    values = {f.name: getattr(item, f.name) for f in fields(item)}
    values["settings"] = asdict(item.settings)
    values["inputs"] = [{**asdict(i), "file": str(i.file)} for i in item.inputs]
    return values


def _item_of(values: dict) -> Item:
    from flux_batch.plan.inputs import InputImage

    inputs = tuple(InputImage(**{**i, "file": Path(i["file"])}) for i in values["inputs"])
    return Item(**{**values, "settings": Settings(**values["settings"]), "inputs": inputs})


@dataclass(frozen=True)
class Job:
    """What each actor needs, built once by the driver: the model files (at the same paths on
    every node), how to load and run them, how to write the images, and the run directory."""

    files: Any  # model/files.ModelFiles
    load: Any  # model/load.LoadOptions
    render: Any  # render/schedule.RenderOptions
    image: Any  # store/writer.ImageOptions
    device: str  # runtime.device
    run_dir: str
    groups: dict  # Settings -> items: what sizes the batches
    probe: str  # the file in .ray/ each actor must see


class RenderActor:
    """One render worker: checks that it sees the run directory and the model files, loads the
    pipeline once, then renders batches of items into the run directory and returns their
    records (JSON), or each item's failure."""

    def __init__(self, job: Job):
        import ray

        from flux_batch.model.cache import get_pipeline
        from flux_batch.model.device import resolve_device
        from flux_batch.render.schedule import for_run as make_schedule
        from flux_batch.store.run_dir import RunStore
        from flux_batch.store.writer import ImageWriter

        self.node = ray.get_runtime_context().get_node_id()
        self.run_dir = Path(job.run_dir)
        where = f"node {self.node} ({socket.gethostname()})"
        if not (self.run_dir / FOLDER / job.probe).exists():
            raise FluxBatchError(
                f"{where}: {job.run_dir} is not the run directory the driver writes (its probe "
                "file is not there); the output folder must be one filesystem that every node "
                "mounts at the same path"
            )
        for path in _model_paths(job.files):
            if not os.access(path, os.R_OK):
                raise FluxBatchError(
                    f"{where}: cannot read the model file {path}; every node needs the model "
                    "files at the same path"
                )
        device = resolve_device(job.device)
        pipe, _ = get_pipeline(job.files, job.load, device)
        self.schedule = make_schedule(pipe, job.files, device, job.groups, lambda: False, job.render)
        store = RunStore(self.run_dir, layout=job.image.layout)
        self.writer = ImageWriter(store, job.image, workers=0)

    def __call__(self, batch: dict) -> dict:
        from flux_batch import faults
        from flux_batch.store.images import defect

        results = []
        for number in batch["id"]:
            items = read_batch(self.run_dir, int(number))
            for done in self.schedule(items):
                for item in done.batch if done.error is not None else []:
                    results.append(self._failed(item, f"{type(done.error).__name__}: {done.error}"))
                for item, image in zip(done.batch, done.images if done.images is not None else []):
                    image = faults.image(image)
                    if (problem := defect(image)) is not None:
                        results.append(self._failed(item, problem))
                        continue
                    record, _ = self.writer.save(item, image)  # durable before it is returned
                    results.append(json.dumps({"record": record, "node": self.node, "pid": os.getpid()}))
        return {"result": results}

    def _failed(self, item: Item, reason: str) -> str:
        return json.dumps(
            {"failed": {"id": item.id, "k": item.k, "line": item.line}, "reason": reason, "node": self.node}
        )


def render_all(cfg: FluxBatchConfig, job: Job, session, stop, failures, progress, listed) -> dict[str, Any]:
    """Render the session's pending items on the cluster, committing each record as it comes
    back; what run.json records of the engine (address, items per node). `job` lacks the run
    directory, the groups and the probe, added here."""
    ray = connect(cfg.engine)
    store, todo = session.store, session.todo
    batch_size = cfg.batch_size if isinstance(cfg.batch_size, int) else 1
    batches = write_pending(store.dir, todo, batch_size)
    probe = f"probe-{uuid.uuid4().hex}"  # each actor must see it: the same directory
    (store.dir / FOLDER / probe).touch()
    per_node: Counter[str] = Counter()
    processes: set[tuple[str, int]] = set()  # the actor processes whose items were committed
    try:
        # a block is one actor task: its results come back together, and a retry runs it all
        # again. One batch per block, up to a bound on the blocks Ray keeps track of
        blocks = min(batches, MAX_BLOCKS)
        dataset = ray.data.range(batches, override_num_blocks=blocks).materialize()
        results = dataset.map_batches(
            RenderActor,
            fn_constructor_args=(
                replace(job, run_dir=str(store.dir), groups=dict(todo.groups), probe=probe),
            ),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(**_pool(cfg.engine.workers)),
            num_cpus=cfg.engine.cpus_per_worker,
            num_gpus=_gpus(ray, cfg.engine.gpus_per_worker),
        )
        for row in _arriving(results, cfg.engine.stall_timeout, stop, len(todo)):
            result = json.loads(row["result"])
            if result["node"] not in per_node:  # a node's first result: its worker is up
                (name,) = _named_nodes(ray, {result["node"]: 0})
                log.info("engine=ray: a worker on node %s is rendering", name)
                per_node[result["node"]] += 0
            if _commit(result, store, failures, progress, listed):
                per_node[result["node"]] += 1
                processes.add((result["node"], result["pid"]))
    except FluxBatchError:
        raise
    except Exception as e:
        raise _one_line(e) from None
    finally:  # the next run writes its own: what is pending then
        for name in (probe, ITEMS, OFFSETS):
            (store.dir / FOLDER / name).unlink(missing_ok=True)
    return {
        "name": "ray",
        "address": cfg.engine.address,
        "items_per_node": _named_nodes(ray, per_node),
        "worker_processes": len(processes),  # more than engine.workers: actors restarted
    }


def _arriving(results, stall_timeout: float, stop, pending: int):
    """The dataset's rows as they arrive, pulled on a thread so that this one can watch: a
    stop request ends the loop within a second, and no row for `stall_timeout` seconds
    raises StalledError. Ray's failures come out here as they were raised."""
    rows: queue.Queue = queue.Queue(maxsize=1024)

    def pull() -> None:
        try:
            for row in results.iter_rows():
                rows.put((True, row))
            rows.put((True, None))
        except BaseException as e:  # handed to the driver's thread
            rows.put((False, e))

    threading.Thread(target=pull, name="flux-batch-ray-results", daemon=True).start()
    last, arrived = time.monotonic(), 0
    while not stop.requested():
        try:
            ok, row = rows.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - last > stall_timeout:
                raise StalledError(
                    f"no item finished for {stall_timeout:g} s (engine.stall_timeout): "
                    f"{pending - arrived} items still pending; run the same command again to resume them"
                ) from None
            continue
        if not ok:
            raise row
        if row is None:
            return
        last, arrived = time.monotonic(), arrived + 1
        yield row


def _commit(result: dict, store, failures, progress, listed) -> bool:
    """One result of a batch: its record into the manifest (unless a retried batch's copy of
    the item committed already), or its failure into errors.jsonl; whether a record went in."""
    if "failed" in result:
        item = result["failed"]
        if (item["id"], item["k"]) not in store.manifest.files:
            failures.add(Item(item["id"], item["k"], "", 0, None, "", item["line"]), result["reason"])
            progress.update(1)
        return False
    record = result["record"]
    if (record["id"], record["k"]) in store.manifest.files:
        return False  # a batch Ray ran again: its images were rewritten with the same bytes
    store.output.list(record, None)
    listed(None)
    return True


def _model_paths(files) -> list[str]:
    """The local files and folders an actor loads (a hub id or URL is fetched by each node)."""
    paths = [files.base, files.transformer, *(getattr(lora, "path", None) for lora in files.loras)]
    return [str(p) for p in paths if p and os.path.isabs(str(p))]


def _pool(workers) -> dict:
    if isinstance(workers, int):
        return {"size": workers}
    low, high = list(workers)
    return {"min_size": low, "max_size": high}


def _gpus(ray, gpus_per_worker: float | None) -> float:
    """engine.gpus_per_worker, or one GPU per worker when the cluster has any."""
    if gpus_per_worker is not None:
        return gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _named_nodes(ray, per_node: dict[str, int]) -> dict[str, int]:
    """Items per node, each node named by its address and the start of its id."""
    names = {n["NodeID"]: _node_name(n["NodeManagerAddress"], n["NodeID"]) for n in ray.nodes()}
    return {names.get(node, node): count for node, count in sorted(per_node.items())}


def _node_name(address: str, node_id: str) -> str:
    return f"{address} ({node_id[:8]})"


def _one_line(e: Exception) -> FluxBatchError:
    """A failure Ray reports (an actor that could not start, a task that failed for good) as
    one line: our own message when one of ours is inside it."""
    text = str(e)
    for line in text.splitlines():
        if "FluxBatchError: " in line or "ConfigError: " in line:
            return FluxBatchError(line.split("Error: ", 1)[1].strip())
    first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)
    return FluxBatchError(f"engine=ray: the run failed on the cluster: {first.strip()}")
