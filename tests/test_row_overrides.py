"""Per-row sampler overrides are checked like everything else: every bad row is reported as
FILE:LINE before any model loads, and nothing is written."""

from __future__ import annotations

import json


def test_bad_overrides_deep_in_a_file_are_reported_by_line_before_the_model_loads(cli):
    rows = [{"prompt": f"prompt {n}"} for n in range(60)]
    rows[39] = {"prompt": "row 40", "scheduler": "dpm++"}
    rows[44] = {"prompt": "row 45", "aspect": "wide"}
    rows[49] = {"prompt": "row 50", "aspect": "16:9", "width": 128}
    rows[54] = {"prompt": "row 55", "true_cfg": "strong", "negative_prompt": "x"}
    (cli.cwd / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("dataset.path=big.jsonl", check=False)
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if "big.jsonl:" in line]
    assert problems == [
        "flux-batch: error: big.jsonl:40: scheduler='dpm++': expected one of euler, heun, "
        "euler_karras, euler_exponential, euler_beta",
        "big.jsonl:45: aspect: expected an aspect ratio as W:H with positive numbers, e.g. 16:9, got 'wide'",
        "big.jsonl:50: aspect and width/height both set: give one or the other",
        "big.jsonl:55: true_cfg='strong' must be a finite number >= 0",
    ]
    assert "loading transformer" not in result.stderr
    assert not (cli.cwd / "outputs").exists() or not list((cli.cwd / "outputs").rglob("metadata.jsonl"))


def test_csv_rows_carry_sampler_overrides_as_text(cli):
    (cli.cwd / "p.csv").write_text(
        "id,prompt,scheduler,aspect,negative_prompt,true_cfg\n"
        "a,a cat,euler_karras,3:2,,\n"
        'b,a dog,,,"blurry, dark",2\n'
    )
    cli("dataset.path=p.csv", "output.dir=run")
    records = {r["id"]: r for r in (json.loads(line) for line in (cli.cwd / "run" / "metadata.jsonl").open())}
    assert (records["a"]["scheduler"], records["a"]["width"], records["a"]["height"]) == (
        "euler_karras",
        80,
        48,
    )
    assert (records["b"]["negative_prompt"], records["b"]["true_cfg"], records["b"]["scheduler"]) == (
        "blurry, dark",
        2.0,
        "euler",
    )
