"""engine=ray through the real CLI: a Ray inside the process, a two-node cluster joined by
engine.address, render workers killed, a node removed and the driver killed mid-run, a stall,
a sweep, and the bad inputs. Each scenario (tests/ray_scenarios.py) runs inside a
loopback-only network namespace, so Ray binds 127.0.0.1 and nothing leaves the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import manifest, script

pytest.importorskip("ray", reason="engine=ray needs the [ray] extra (in [dev])")

SCENARIOS = str(Path(__file__).with_name("ray_scenarios.py"))
sys.path.insert(0, str(Path(__file__).parent))
from ray_scenarios import ARGS  # noqa: E402


def _namespaces() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _namespaces(), reason="needs `unshare -n` (root): Ray must not use the network"),
]


def scenario(name: str, folder: Path) -> dict:
    """Run one scenario in its own loopback-only namespace; what it wrote down."""
    folder.mkdir(parents=True, exist_ok=True)
    command = f"ip link set lo up && exec {sys.executable} {SCENARIOS} {name} {folder}"
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "result.json").read_text())


def ok(result: dict) -> str:
    """The run's summary line (Ray may print a retried task's notice after it)."""
    assert result["code"] == 0, result["stderr"][-3000:]
    (line,) = [
        line
        for line in result["stdout"].splitlines()
        if "items in the plan" in line or "nothing to do" in line
    ]
    return line


@pytest.fixture(scope="module")
def local_pixels(tmp_path_factory) -> dict:
    """engine=local's images of each scenario's items, by file_name, at each step count."""
    folder = tmp_path_factory.mktemp("local")
    found = {}
    for steps in (None, 8):
        out = folder / f"steps-{steps}"
        extra = [] if steps is None else [f"sampler.steps={steps}"]
        subprocess.run(
            [script("flux-batch"), *ARGS, f"output.dir={out}", *extra], check=True, capture_output=True
        )
        found[steps] = {r["file_name"]: pixels_of(out / r["file_name"]) for r in manifest(out)}
    return found


def pixels_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def assert_every_item_once_as_local(run: Path, local: dict) -> list[dict]:
    """Every item in the manifest exactly once, each image within 2/255 of engine=local's."""
    records = manifest(run)
    keys = [(r["id"], r["k"]) for r in records]
    assert len(keys) == len(set(keys)) == len(local)
    for record in records:
        worst = np.abs(pixels_of(run / record["file_name"]) - local[record["file_name"]]).max()
        assert worst <= 2, (record["file_name"], worst)
    return records


def engine_of(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["engine"]


def test_a_local_ray_renders_the_pixels_of_engine_local_and_a_rerun_renders_nothing(tmp_path, local_pixels):
    result = scenario("local", tmp_path)
    assert ": rendered 12, skipped 0 already done, failed 0 (" in ok(result["first"])
    assert "nothing to do, all 12 items already done" in ok(result["again"])
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[None])
    engine = engine_of(tmp_path / "run")
    assert engine["name"] == "ray" and sum(engine["items_per_node"].values()) == 12


def test_a_two_node_cluster_spreads_the_items_and_counts_them_per_node(tmp_path, local_pixels):
    result = scenario("cluster", tmp_path)
    assert "rendered 12" in ok(result["first"])
    assert "nothing to do" in ok(result["again"])
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[None])
    per_node = engine_of(tmp_path / "run")["items_per_node"]
    assert len(per_node) == 2 and all(count > 0 for count in per_node.values())
    assert sum(per_node.values()) == 12
    for node, count in per_node.items():  # the log names each node as it starts, and its count
        assert f"engine=ray: a worker on node {node} is rendering" in result["first"]["stdout"]
        assert f"engine=ray: {count} items rendered on node {node}" in result["first"]["stdout"]


def test_render_workers_killed_five_times_lose_and_duplicate_nothing(tmp_path, local_pixels):
    result = scenario("kills", tmp_path)
    assert "rendered 12" in ok(result["first"])
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[None])
    # each worker process dies writing its third image: 12 items took at least 6 processes
    assert engine_of(tmp_path / "run")["worker_processes"] >= 6


def test_a_node_removed_mid_run_loses_and_duplicates_nothing(tmp_path, local_pixels):
    result = scenario("node_lost", tmp_path)
    assert result["at_removal"] < 12  # removed while items were pending
    assert "failed 0" in ok(result["first"])
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[8])


def test_a_driver_killed_mid_run_resumes_with_nothing_lost_or_duplicated(tmp_path, local_pixels):
    result = scenario("driver_killed", tmp_path)
    assert 3 <= result["at_kill"] < 12
    line = ok(result["again"])
    rendered = int(line.split("rendered ")[1].split(",")[0])
    skipped = int(line.split("skipped ")[1].split(" ")[0])
    assert rendered + skipped == 12 and skipped >= result["at_kill"]
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[8])


def test_a_stalled_run_ends_in_one_line_naming_the_pending_items_and_a_rerun_resumes(tmp_path, local_pixels):
    result = scenario("stall", tmp_path)
    first = result["first"]
    assert first["code"] == 1
    (line,) = [line for line in first["stderr"].splitlines() if line.startswith("flux-batch: error:")]
    assert "no item finished for 15 s (engine.stall_timeout): 12 items still pending" in line
    assert "rendered 12" in ok(result["again"])
    assert_every_item_once_as_local(tmp_path / "run", local_pixels[None])


def test_a_sweep_runs_each_job_on_ray(tmp_path):
    result = scenario("sweep", tmp_path)
    assert result["first"]["code"] == 0, result["first"]["stderr"][-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").rglob("run.json"))
    assert len(jobs) == 2
    for job in jobs:
        assert len(manifest(job)) == 12 and engine_of(job)["name"] == "ray"
    assert result["first"]["stdout"].count("rendered 12") == 2


def one_error_line(result: dict) -> str:
    assert result["code"] == 2, result["stderr"][-3000:]
    errors = [line for line in result["stderr"].splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result["stderr"][-3000:]
    return errors[0]


def test_an_unreachable_address_is_one_line_within_a_minute(tmp_path):
    result = scenario("unreachable", tmp_path)
    line = one_error_line(result["first"])
    assert line.startswith("flux-batch: error: engine.address=127.0.0.1:1: no Ray cluster answers there")
    assert result["seconds"] < 60
    assert not (tmp_path / "run" / "metadata.jsonl").exists()


def test_a_cluster_that_wants_a_token_is_one_line_naming_the_variables(tmp_path):
    result = scenario("no_token", tmp_path)
    line = one_error_line(result["first"])
    assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line
    assert result["seconds"] < 60


def test_without_ray_engine_ray_is_one_line_naming_the_extra(tmp_path):
    blocked = "import sys; sys.modules['ray'] = None; from flux_batch.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", blocked, *ARGS, f"output.dir={tmp_path / 'run'}", "engine=ray"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = one_error_line({"code": result.returncode, "stderr": result.stderr})
    assert (
        line
        == "flux-batch: error: engine=ray needs Ray, which is not installed: pip install 'flux-batch[ray]'"
    )


def test_items_reach_the_workers_as_json_with_their_inputs_and_columns():
    """`.ray/pending.items` holds JSON lines, never pickles: an Item comes back equal."""
    from flux_batch.plan.inputs import InputImage
    from flux_batch.plan.items import Item, Settings
    from flux_batch.scale.ray_engine import _item_fields, _item_of

    source = InputImage("in/a.png", Path("/data/in/a.png"), "ab" * 32, 40, 24, "PNG")
    item = Item(
        "x",
        1,
        "make it red",
        7,
        Settings(32, 16, 4, 2.5, references=1),
        "x_1",
        3,
        None,
        {"tag": [1, "b"]},
        9,
        (source,),
    )
    back = _item_of(json.loads(json.dumps(_item_fields(item))))
    assert back == item and back.inputs == item.inputs and back.extra == item.extra


def test_engine_ray_with_tar_shards_is_one_line(cli):
    result = cli("engine=ray", "output.layout=webdataset", check=False)
    assert result.returncode == 2
    assert "engine=ray writes output.layout=flat or sharded" in result.stderr
