"""Hydra multirun through the installed CLI: job folders named by swept overrides, resume of a
killed sweep, sweep.json, the model loaded once per process, quantization as an axis."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import manifest, write_prompts

TWO_PROMPTS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]
SWEEP_2X2 = ("-m", "sampler.guidance=2.5,3.5", "sampler.steps=1,2", "runtime.progress=false")
JOBS_2X2 = [
    "sampler.guidance=2.5,sampler.steps=1",
    "sampler.guidance=2.5,sampler.steps=2",
    "sampler.guidance=3.5,sampler.steps=1",
    "sampler.guidance=3.5,sampler.steps=2",
]


def sweep_line(result) -> str:
    """The sweep's closing summary (the last line the sweep prints)."""
    return result.stdout.strip().splitlines()[-1]


def sweep_state(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def image_mtimes(sweep_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sweep_dir.glob("*/images/*.png")}


def test_a_2x2_sweep_renders_4_runs_once_and_a_rerun_renders_nothing(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS)
    first = cli(*SWEEP_2X2, f"dataset.path={prompts}")

    sweeps = list((cli.cwd / "multirun").iterdir())  # the default sweep folder, named stably
    assert len(sweeps) == 1 and re.fullmatch(r"p-tiny-[0-9a-f]{8}", sweeps[0].name)
    sweep_dir = sweeps[0]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == JOBS_2X2
    for name in JOBS_2X2:
        records = manifest(sweep_dir / name)
        guidance, steps = re.fullmatch(r"sampler.guidance=(.+),sampler.steps=(.+)", name).groups()
        assert [r["id"] for r in records] == ["fox", "owl"]
        assert {(r["guidance"], r["steps"]) for r in records} == {(float(guidance), int(steps))}
    assert sweep_line(first) == (
        f"{sweep_dir}: 4 jobs, 4 done; rendered 8, skipped 0 already done, failed 0; model loaded 1 time(s)"
    )
    state = sweep_state(sweep_dir)
    assert [job["name"] for job in state["jobs"]] == JOBS_2X2
    assert [job["state"] for job in state["jobs"]] == ["done"] * 4
    assert [job["model_loads"] for job in state["jobs"]] == [1, 0, 0, 0]
    assert state["jobs"][3]["overrides"] == {"sampler.guidance": "3.5", "sampler.steps": "2"}
    assert state["axes"] == {"sampler.guidance": ["2.5", "3.5"], "sampler.steps": ["1", "2"]}

    before = image_mtimes(sweep_dir)
    again = cli(*SWEEP_2X2, f"dataset.path={prompts}")
    assert sweep_line(again) == (
        f"{sweep_dir}: 4 jobs, 4 done; rendered 0, skipped 8 already done, failed 0; model loaded 0 time(s)"
    )
    assert again.stdout.count("nothing to do, all 2 items already done") == 4
    assert image_mtimes(sweep_dir) == before


def test_a_value_added_to_an_axis_renders_only_the_new_jobs(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS[:1])
    common = ("-m", f"dataset.path={prompts}", "hydra.sweep.dir=sw", "runtime.progress=false")
    cli(*common, "sampler.steps=1,2")
    before = image_mtimes(cli.cwd / "sw")
    wider = cli(*common, "sampler.steps=1,2,3")
    assert "rendered 1, skipped 2 already done" in sweep_line(wider)
    assert "model loaded 1 time(s)" in sweep_line(wider)
    assert sorted(p.name for p in (cli.cwd / "sw").iterdir() if p.is_dir()) == [
        "sampler.steps=1",
        "sampler.steps=2",
        "sampler.steps=3",
    ]
    after = image_mtimes(cli.cwd / "sw")
    assert {k: after[k] for k in before} == before and len(after) == 3


def test_settings_common_to_all_jobs_name_the_sweep_not_the_jobs(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS[:1])
    base = ("-m", f"dataset.path={prompts}", "sampler.steps=1", "runtime.progress=false")
    cli(*base, "seed=0,1")
    cli(*base, "seed=0,1", "sampler.guidance=2.0")  # another common setting: another sweep
    sweeps = sorted((cli.cwd / "multirun").iterdir())
    assert len(sweeps) == 2
    for sweep_dir in sweeps:
        assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]


def test_a_sweep_killed_in_its_third_job_resumes_only_what_is_missing(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS)
    args = (*SWEEP_2X2, f"dataset.path={prompts}", "hydra.sweep.dir=sw")
    # 2 images per job: the 5th image written is the third job's first, killed before its
    # manifest line
    killed = cli(*args, check=False, env={"FLUX_BATCH_CRASH": "image_written:5"})
    assert killed.returncode == -9
    sweep_dir = cli.cwd / "sw"
    assert [len(manifest(sweep_dir / name)) for name in JOBS_2X2] == [2, 2, 0, 0]
    assert [job["state"] for job in sweep_state(sweep_dir)["jobs"]] == ["done", "done", "running", "pending"]

    resumed = cli(*args)
    assert sweep_line(resumed) == (
        f"{sweep_dir}: 4 jobs, 4 done; rendered 4, skipped 4 already done, failed 0; model loaded 1 time(s)"
    )
    for name in JOBS_2X2:
        assert sorted(r["id"] for r in manifest(sweep_dir / name)) == ["fox", "owl"]
    state = sweep_state(sweep_dir)
    assert [job["state"] for job in state["jobs"]] == ["done"] * 4
    assert [job["rendered"] for job in state["jobs"]] == [0, 0, 2, 2]


def test_quantization_is_a_sweep_axis(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS[:1])
    result = cli(
        "-m",
        "quant=q8_0,q4_0",
        "model=tiny",
        "sampler.steps=1,2",
        "hydra.sweep.dir=sw",
        f"dataset.path={prompts}",
        "runtime.progress=false",
    )
    assert "model loaded 2 time(s)" in sweep_line(result)  # quant first: each loads once
    for quant in ("q8_0", "q4_0"):
        for steps in (1, 2):
            records = manifest(cli.cwd / "sw" / f"quant={quant},sampler.steps={steps}")
            assert [(r["quant"], r["steps"]) for r in records] == [(quant, steps)]


def test_a_quant_the_tiny_model_cannot_write_is_refused_clearly(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", TWO_PROMPTS[:1])
    result = cli("-m", "quant=q6_k", "hydra.sweep.dir=sw", f"dataset.path={prompts}", check=False)
    assert result.returncode == 2
    assert (
        "quant=q6_k: the tiny model is quantized here with the gguf package, which cannot "
        "write Q6_K; use quant=q8_0, q4_0, bf16 or f32" in result.stderr
    )
    assert sweep_state(cli.cwd / "sw")["jobs"][0]["state"] == "failed"


def test_output_dir_in_a_sweep_is_refused_naming_hydra_sweep_dir(cli):
    result = cli("-m", "output.dir=mine", "sampler.steps=1,2", "hydra.sweep.dir=sw", check=False)
    assert result.returncode == 2
    assert (
        "flux-batch: error: output.dir=mine: a sweep names each job's run directory itself; "
        "use hydra.sweep.dir=DIR to choose the sweep's folder" in result.stderr
    )
    assert not (cli.cwd / "mine").exists()
    assert not list((cli.cwd / "sw").glob("*/metadata.jsonl"))
