"""flux-batch-grid on a real sweep: layout, labels, cells equal to the scaled sources, the HTML
gallery as headless Chromium shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import Cli, script, write_prompts
from flux_batch.sweep.grid import BACKGROUND

PROMPTS = [
    {"id": "fox", "prompt": "a red fox in the snow, photographed at dawn with a long lens"},
    {"id": "tall", "prompt": "a tall tower", "width": 48, "height": 80},
    {"id": "owl", "prompt": "an owl at night"},
]
HEADERS = [
    ["guidance=2.5", "steps=1"],
    ["guidance=2.5", "steps=2"],
    ["guidance=3.5", "steps=1"],
    ["guidance=3.5", "steps=2"],
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, model_cache):
    cwd = tmp_path_factory.mktemp("grid")
    prompts = write_prompts(cwd / "p.jsonl", PROMPTS)
    Cli(cwd, model_cache)(
        "-m",
        "sampler.guidance=2.5,3.5",
        "sampler.steps=1,2",
        "hydra.sweep.dir=sw",
        f"dataset.path={prompts}",
        "runtime.progress=false",
    )
    return cwd / "sw"


def grid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("flux-batch-grid"), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def layout(path) -> tuple[Image.Image, dict]:
    image = Image.open(path)
    return image.convert("RGB"), json.loads(image.info["flux_batch_grid"])


def ink(region: Image.Image) -> int:
    """Pixels that are not background."""
    return int((np.asarray(region) != BACKGROUND).any(axis=2).sum())


def test_grid_rows_are_prompts_and_columns_jobs_labelled_by_what_differs(sweep, tmp_path):
    out = tmp_path / "g.png"
    result = grid(sweep, "-o", out, "--cell", "96")
    assert result.returncode == 0, result.stderr
    image, info = layout(out)
    assert info["cols"] == HEADERS
    assert info["rows"] == [[p["prompt"]] for p in PROMPTS]
    assert len(info["cells"]) == 12

    boxes = {(c["row"], c["col"]): c for c in info["cells"]}
    right = max(c["box"][0] + c["box"][2] for c in info["cells"])
    bottom = max(c["box"][1] + c["box"][3] for c in info["cells"])
    assert 0 < image.height - bottom <= 20 and 0 < image.width - right <= 20 + 96  # nothing cut off
    for (_row, c), cell in boxes.items():
        x, y, w, h = cell["box"]
        with Image.open(cell["file"]) as source:
            scale = min(96 / source.width, 96 / source.height)
            expected_size = (round(source.width * scale), round(source.height * scale))
            expected = source.convert("RGB").resize(expected_size, Image.Resampling.LANCZOS)
        assert (w, h) == expected_size
        assert np.array_equal(np.asarray(image.crop((x, y, x + w, y + h))), np.asarray(expected))
        assert f"sampler.guidance={HEADERS[c][0][9:]},sampler.steps={HEADERS[c][1][6:]}" in cell["file"]
    assert boxes[(1, 0)]["box"][2:] == [58, 96]  # the 48x80 image keeps its aspect

    header_bottom = info["header_bottom"]
    for c in range(4):  # each column's header band has text in it
        x, _, w, _ = boxes[(0, c)]["box"]
        assert ink(image.crop((x, 0, x + 96, header_bottom))) > 50
    first_left = boxes[(0, 0)]["box"][0]
    for r in range(3):  # and each row's label
        _, y, _, _ = boxes[(r, 0)]["box"]
        assert ink(image.crop((0, y, first_left - 4, y + 40))) > 50


def test_one_row_and_one_column_grids(sweep, tmp_path):
    assert grid(sweep, "-o", tmp_path / "row.png", "--max-prompts", "1", "--rows", "id").returncode == 0
    _, row = layout(tmp_path / "row.png")
    assert (row["rows"], len(row["cols"])) == ([["fox"]], 4)
    assert {c["row"] for c in row["cells"]} == {0} and row["cells"][0]["box"][2:] == [256, 256]

    result = grid(sweep, "-o", tmp_path / "col.png", "--max-prompts", "1", "--rows", "job")
    assert result.returncode == 0, result.stderr
    _, col = layout(tmp_path / "col.png")
    assert col["rows"] == HEADERS and col["cols"] == [[PROMPTS[0]["prompt"]]]
    assert {c["col"] for c in col["cells"]} == {0} and len(col["cells"]) == 4


def test_bad_arguments_are_one_line_errors(sweep, tmp_path):
    both = grid(sweep, "--rows", "job", "--cols", "job")
    assert both.returncode == 2 and "one axis must be job" in both.stderr
    missing = grid(tmp_path / "nowhere")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"flux-batch-grid: error: {tmp_path / 'nowhere'}: no such sweep folder"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_gallery_renders_in_headless_chromium(sweep, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    result = grid(sweep, "-o", sweep / "grid.png", "--html")
    assert result.returncode == 0, result.stderr
    page = sweep / "index.html"
    text = page.read_text()
    assert "src='sampler.guidance=2.5,sampler.steps=1/images/fox.png'" in text  # relative links
    assert "<th>seed</th>" in text and "<th>sha256</th>" in text

    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1100,800",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (800, 1100, 3)
    assert (pixels != 255).any(axis=2).mean() > 0.2  # not a blank page
    # the tiny model's images are saturated noise: text and table lines are not, so many
    # colourful pixels mean the thumbnails loaded through their relative links
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 80).sum() > 20000


def test_a_sweep_in_the_webdataset_layout_shows_its_tar_members(model_cache, tmp_path):
    """Images inside tar shards: the grid reads them, the gallery links copies a browser opens."""
    import hashlib
    import re

    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    Cli(tmp_path, model_cache)(
        "-m",
        "sampler.steps=1,2",
        "hydra.sweep.dir=sw",
        f"dataset.path={prompts}",
        "output.layout=webdataset",
        "sampler.width=32",
        "sampler.height=32",
        "runtime.progress=false",
    )
    sweep_dir = tmp_path / "sw"
    result = grid(sweep_dir, "--html")
    assert result.returncode == 0, result.stderr
    _, info = layout(sweep_dir / "grid.png")
    assert len(info["cells"]) == 4
    records = {}
    for job in sweep_dir.iterdir():
        if (job / "metadata.jsonl").exists():
            for line in (job / "metadata.jsonl").read_text().splitlines():
                record = json.loads(line)
                records[record["sha256"]] = record
    for cell in info["cells"]:  # each cell is a copy of a listed tar member, byte for byte
        data = open(cell["file"], "rb").read()
        assert hashlib.sha256(data).hexdigest() in records
        assert "/tar-images/" in cell["file"]
    page = (sweep_dir / "index.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) == 4 and all((sweep_dir / src).is_file() for src in sources)
