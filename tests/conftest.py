"""Shared fixtures: a per-session model cache with the tiny model built once, and a helper that
runs the installed `flux-batch` script the way a user does."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"  # real prompt sets, with their licences


def script(name: str) -> str:
    """The console script pip installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed: run the README's install command"
    return str(path)


# The fast tier, `python -m pytest -m fast` (docs/development.md): whole modules, and chosen tests
# of the others, that together touch every package and the CLI in a few minutes. A module's
# name alone takes all its tests; with names, only those (parametrized ones with every case).
FAST_TESTS: dict[str, tuple[str, ...]] = {
    "test_prompts.py": (),
    "test_items.py": (),  # plan
    "test_config.py": (),
    "test_package.py": ("test_the_package_has_no_import_circles",),
    "test_readme.py": (),
    "test_faults.py": (),
    "test_model_hash.py": ("test_a_file_is_hashed_once_then_read_back_until_it_changes",),  # model
    "test_lean_gguf_loading.py": (
        "test_the_same_tensors_as_diffusers_reader_with_quantized_weights_left_in_the_file",
    ),
    "test_render.py": ("test_reference_covers_every_row",),  # one run of the seven reference rows
    "test_manifest_index.py": (),
    "test_image_writer.py": (  # store
        "test_records_follow_the_order_images_were_handed_in",
        "test_a_failed_write_stops_with_one_line_and_lists_nothing_after_it",
    ),
    "test_security.py": (
        "test_image_paths_cannot_leave_the_images_folder",
        "test_symlinks_cannot_redirect_an_image_write",
    ),
    "test_shares.py": (),  # scale
    "test_sweep.py": ("test_a_quant_the_tiny_model_cannot_write_is_refused_clearly",),  # sweep
    "test_gguf_quants.py": ("test_bit_exact_with_reference_on_hard_values",),
    "test_gguf_keys.py": (),
    "test_demo_shapes.py": (),  # demo
    "test_export.py": ("test_a_changed_image_stops_the_export_and_leaves_nothing",),
    "test_bad_input.py": ("test_malformed_prompt_files", "test_bad_overrides"),  # the CLI's refusals
    "test_disk_errors.py": (),
    # families: each one's agreement with a plain diffusers call and one refusal
    "test_families.py": (),
    "test_family_kontext.py": ("test_batch_one_gives_the_pixels_of_one_plain_kontext_pipeline_call",),
    "test_family_flux2.py": (
        "test_flux_batch_agrees_with_one_plain_diffusers_call",
        "test_a_klein_file_under_the_dev_preset_is_one_line",
    ),
    "test_family_chroma.py": (
        "test_agreement_with_a_plain_chroma_pipeline_call",
        "test_a_flux1_file_under_the_chroma_preset_is_one_line",
    ),
    "test_docs_tables.py": (),
    "test_encoder_device.py": ("test_with_model_offload_it_is_refused_in_one_line",),
    # input images: every refusal, and a before/after dataset that loads
    "test_input_images.py": ("test_a_bad_input_is_one_line_naming_the_file_and_line_and_nothing_is_written",),
    "test_input_outputs.py": ("test_a_folder_run_keeps_each_input_once_and_loads_as_before_after_pairs",),
    # engine=ray: a Ray inside the process, the pixels of engine=local (about 30 s)
    "test_ray_engine.py": (
        "test_a_local_ray_renders_the_pixels_of_engine_local_and_a_rerun_renders_nothing",
    ),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = FAST_TESTS.get(item.path.name)
        if names is not None and (not names or item.originalname in names):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["FLUX_BATCH_CACHE"] = str(cache)
    from flux_batch.demo import tiny

    tiny.ensure_built("Q8_0")
    return cache


# The suite renders the random tiny model (fast: it proves the plumbing) unless a test names
# another model or passes model=None for the bare default (the trained demo model).
TEST_MODEL = "tiny"


def with_model(args: tuple[str, ...], model: str | None) -> list[str]:
    if model is None or any(a.startswith("model=") for a in args):
        return list(args)
    flags = 1 if args and args[0] in ("-m", "--multirun") else 0  # Hydra's flags come first
    return [*args[:flags], f"model={model}", *args[flags:]]


class Cli:
    """`flux-batch ARGS` in `cwd`, as a user runs it: its exit status, stdout and stderr. Each run
    is forked from the warm interpreter of `tests/cli_server.py` (the installed script's own
    entry point, `flux_batch.cli:main`, in a fresh process with this environment), which spares
    every run seconds of imports; `popen` starts the installed script itself."""

    def __init__(self, cwd: Path, cache: Path):
        self.cwd = cwd
        self.env = {**os.environ, "FLUX_BATCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        self.cache = cache

    def __call__(
        self,
        *args: str,
        check: bool = True,
        env: dict | None = None,
        timeout: float = 300,
        model: str | None = TEST_MODEL,
    ):
        args = tuple(with_model(args, model))
        result = warm_server(self.cache).run(
            self.cwd, args, env={**self.env, **(env or {})}, kill_after=timeout, exact_env=True, split=True
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"flux-batch {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, env: dict | None = None, model: str | None = TEST_MODEL) -> subprocess.Popen:
        return subprocess.Popen(
            [script("flux-batch"), *with_model(args, model)],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.env, **(env or {})},
        )


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for a process to stop itself (a `stop` fault point: SIGSTOP) or fail if it exits."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode} before stopping: {proc.communicate()}"
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.05)
    raise AssertionError("the process did not reach its stop point")


@pytest.fixture
def cli(tmp_path, model_cache) -> Cli:
    return Cli(tmp_path, model_cache)


class CliServer:
    """`flux-batch` runs forked from one warm interpreter (see cli_server.py): the same entry
    point as the installed script, without paying the imports for each of dozens of runs."""

    def __init__(self, cache: Path, logs: Path):
        self.logs = logs
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=logs,
            env={**os.environ, "FLUX_BATCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
        )

    def __call__(
        self,
        cwd: Path,
        *args: str,
        env: dict | None = None,
        kill_after: float | None = None,
        model: str | None = TEST_MODEL,
    ) -> subprocess.CompletedProcess:
        """One run; its stdout and stderr together (in both fields)."""
        return self.run(cwd, tuple(with_model(args, model)), env or {}, kill_after)

    def run(
        self,
        cwd: Path,
        args: tuple[str, ...],
        env: dict,
        kill_after: float | None,
        exact_env: bool = False,
        split: bool = False,
        script: str = "flux-batch",
    ) -> subprocess.CompletedProcess:
        """`exact_env`: the run's environment is `env` alone, not the server's updated by it;
        `split`: stdout and stderr apart, as subprocess.run captures them; `script`: a console
        script the server knows (cli_server.SCRIPTS)."""
        self.count += 1
        log, err = (self.logs / f"run-{self.count}.{stream}" for stream in ("log", "err"))
        request = {
            "args": list(args),
            "cwd": str(cwd),
            "log": str(log),
            "env": env,
            "script": script,
            "kill_after": kill_after,
            "exact_env": exact_env,
            "err": str(err) if split else None,
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the flux-batch test server died"
        output = log.read_text() if log.exists() else ""
        errors = (err.read_text() if err.exists() else "") if split else output
        return subprocess.CompletedProcess(args, json.loads(reply)["returncode"], output, errors)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.logs, ignore_errors=True)


_servers: dict[Path, CliServer] = {}


def warm_server(cache: Path) -> CliServer:
    """This pytest process's server for a model cache, started on first use, closed at exit."""
    if cache not in _servers:
        import atexit
        import tempfile

        _servers[cache] = CliServer(cache, Path(tempfile.mkdtemp(prefix="flux-batch-server-")))
        atexit.register(_servers[cache].close)
    return _servers[cache]


def run_script(
    script: str, *args, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`script ARGS` (flux-batch-gguf, ...) as subprocess.run(capture_output=True) would give it,
    forked from the warm server with this process's environment."""
    cache = Path(os.environ.get("FLUX_BATCH_CACHE") or Path.home() / ".cache" / "flux-batch")
    return warm_server(cache).run(
        Path(cwd or os.getcwd()),
        tuple(map(str, args)),
        dict(os.environ),
        kill_after=timeout,
        exact_env=True,
        split=True,
        script=script,
    )


@pytest.fixture(scope="session")
def cli_server(model_cache):
    return warm_server(model_cache)


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def left_behind(run_dir: Path) -> list[str]:
    """What a refused run left in its directory besides Hydra's config snapshot, the log and
    the run lock."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file()
        and ".hydra" not in p.parts
        and p.name != "flux-batch.log"
        and p.name.split(".")[:2] != ["", "lock"]  # .lock, .lock.merge: the run lock
    )


def manifest(run_dir: Path) -> list[dict]:
    path = run_dir / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def image_bytes(run_dir: Path, file_name: str) -> bytes:
    """An image by its manifest file_name: a file, or a member of a tar shard
    (`shards/000001.tar/000000004.png`), read with the standard library's tarfile."""
    tar, sep, member = file_name.partition(".tar/")
    if not sep:
        return (run_dir / file_name).read_bytes()
    with tarfile.open(run_dir / f"{tar}.tar") as archive:
        return archive.extractfile(member).read()


def pixels(run_dir: Path) -> dict[tuple[str, int], np.ndarray]:
    """(id, k) -> uint8 pixels of every image the manifest lists."""
    return {
        (r["id"], r["k"]): np.asarray(
            Image.open(io.BytesIO(image_bytes(run_dir, r["file_name"]))).convert("RGB")
        )
        for r in manifest(run_dir)
    }


# Small, quick renders for the tests that run the CLI dozens of times.
FAST = ("sampler.steps=2", "sampler.width=32", "sampler.height=32", "runtime.progress=false")


def load_dataset(cache: Path, *args, **kwargs):
    """`datasets.load_dataset(..., split="train")` with a cache of the test's own: datasets keys
    its cache of a local folder by the folder's name and file patterns, so a same-named folder
    of an earlier test session would be read back, with its paths."""
    import datasets

    return datasets.load_dataset(*args, split="train", cache_dir=str(cache / "hf-datasets"), **kwargs)


def check_consistent(run_dir: Path) -> list[dict]:
    """What any reader may rely on at any moment: every whole manifest line parses and names
    an image that exists, decodes and has the listed sha256. A torn last line may remain."""
    path = run_dir / "metadata.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = [json.loads(line) for line in lines[:-1]]
    for record in records:
        data = image_bytes(run_dir, record["file_name"])
        assert hashlib.sha256(data).hexdigest() == record["sha256"], record["file_name"]
        Image.open(io.BytesIO(data)).load()
    return records


PROMPTS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "boat", "prompt": "a sailing boat at sunset", "seed": 42},
    {"prompt": "a castle on a hill"},
    {"prompt": "a bowl of ramen", "num_images": 2},
    {"id": "tall", "prompt": "a tall tower", "width": 48, "height": 80},
    {"prompt": "a castle on a hill"},
    {"id": "owl", "prompt": "an owl at night", "steps": 3},
]


@pytest.fixture(scope="module")
def hydra_config():
    """Hydra's config module, for tests that compose configs and call the driver in-process;
    the pipeline they keep is released after the module, so later tests count loads afresh."""
    from hydra import initialize_config_module

    from flux_batch.cli import register_configs
    from flux_batch.model import cache as pipeline_cache

    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        yield
    pipeline_cache.release_pipeline()


def compose_config(*overrides: str):
    """The composed config, on the tiny model unless an override names another."""
    from hydra import compose

    return compose(config_name="config", overrides=["model=tiny", *overrides])
