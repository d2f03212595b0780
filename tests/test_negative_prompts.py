"""Negative prompts with true CFG: per row or run-wide, only where set, never batched with
rows that have none, recorded in the manifest and infotext."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import manifest, pixels, write_prompts
from flux_batch.errors import PromptFileError
from flux_batch.plan.items import RowDefaults, Settings, expand
from flux_batch.plan.prompts import Row
from flux_batch.render.renderer import batches

ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "owl", "prompt": "an owl at night", "negative_prompt": "blurry, dark"},
    {"id": "cat", "prompt": "a cat on a sofa", "negative_prompt": "people"},
]


def test_true_cfg_renders_rows_with_negative_prompts_and_leaves_the_others_alone(cli):
    plain = write_prompts(
        cli.cwd / "plain.jsonl", [{k: v for k, v in r.items() if k != "negative_prompt"} for r in ROWS]
    )
    cli(f"dataset.path={plain}", "output.dir=plain")
    negative = write_prompts(cli.cwd / "negative.jsonl", ROWS)
    # batch_size=3: fox has no negative prompt, so it renders alone, without the second pass
    cli(f"dataset.path={negative}", "output.dir=cfg", "sampler.true_cfg=4", "batch_size=3")
    before, after = pixels(cli.cwd / "plain"), pixels(cli.cwd / "cfg")
    assert np.array_equal(after[("fox", 0)], before[("fox", 0)])
    for key in [("owl", 0), ("cat", 0)]:
        assert np.abs(after[key].astype(int) - before[key].astype(int)).max() > 5

    records = {r["id"]: r for r in manifest(cli.cwd / "cfg")}
    assert (records["fox"]["negative_prompt"], records["fox"]["true_cfg"]) == ("", 1.0)
    assert (records["owl"]["negative_prompt"], records["owl"]["true_cfg"]) == ("blurry, dark", 4.0)
    owl = Image.open(cli.cwd / "cfg" / records["owl"]["file_name"]).info["parameters"]
    assert owl.startswith(
        "an owl at night\nNegative prompt: blurry, dark\nSteps: 4, Sampler: Euler, "
        "CFG scale: 4, Distilled CFG Scale: 3.5,"
    )
    fox = Image.open(cli.cwd / "cfg" / records["fox"]["file_name"]).info["parameters"]
    assert "Negative prompt" not in fox and "CFG scale: 1," in fox


def items_of(*overrides: dict, defaults: RowDefaults) -> list:
    rows = [Row(line=i + 1, prompt=f"p{i}", id=f"r{i}", overrides=o) for i, o in enumerate(overrides)]
    return expand(rows, "p.jsonl", defaults, 0, 1)


def test_batches_never_mix_rows_with_and_without_a_negative_prompt():
    defaults = RowDefaults(Settings(64, 64, 4, 3.5, true_cfg=4.0))
    items = items_of({}, {"negative_prompt": "a"}, {}, {"negative_prompt": "b"}, {}, defaults=defaults)
    groups = [[item.id for item in batch] for batch in batches(items, 8)]
    assert groups == [["r0", "r2", "r4"], ["r1", "r3"]]  # different negatives do batch together
    assert [item.settings.true_cfg for item in items] == [1.0, 4.0, 1.0, 4.0, 1.0]


def test_a_run_wide_negative_prompt_fills_rows_without_their_own():
    defaults = RowDefaults(Settings(64, 64, 4, 3.5, true_cfg=3.0), negative_prompt="text, watermark")
    items = items_of({}, {"negative_prompt": "fog"}, {"true_cfg": 1}, defaults=defaults)
    assert [(i.negative_prompt, i.settings.true_cfg) for i in items] == [
        ("text, watermark", 3.0),
        ("fog", 3.0),
        (None, 1.0),
    ]  # a row's true_cfg=1 turns it off


def test_a_row_negative_prompt_without_true_cfg_is_refused_with_its_line():
    with pytest.raises(PromptFileError) as error:
        items_of(
            {}, {"negative_prompt": "fog"}, {"true_cfg": 2.5}, defaults=RowDefaults(Settings(64, 64, 4, 3.5))
        )
    assert error.value.problems == [
        "p.jsonl:2: negative_prompt has no effect with true_cfg=1: set sampler.true_cfg (or the "
        "row's true_cfg) above 1 to render with it",
        "p.jsonl:3: true_cfg=2.5 has no effect without a negative_prompt",
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"prompt": "a", "negative_prompt": "fog"}\n',
            "p.jsonl:1: negative_prompt has no effect with true_cfg=1",
        ),
        (
            '{"prompt": "a", "negative_prompt": "fog", "true_cfg": 0.5}\n',
            "p.jsonl:1: true_cfg=0.5 must be >= 1",
        ),
        (
            '{"prompt": "a", "negative_prompt": 3, "true_cfg": 2}\n',
            "p.jsonl:1: negative_prompt must be a string, got int",
        ),
    ],
)
def test_bad_negative_prompt_rows_exit_2_before_the_model_loads(cli, content, message):
    (cli.cwd / "p.jsonl").write_text(content)
    result = cli("dataset.path=p.jsonl", check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "loading transformer" not in result.stderr


def test_a_run_wide_negative_prompt_without_true_cfg_names_the_keys(cli):
    result = cli("sampler.negative_prompt=blurry", check=False)
    assert result.returncode == 2
    assert "sampler.negative_prompt has no effect with sampler.true_cfg=1" in result.stderr
