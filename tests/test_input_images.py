"""Bad input images are refused before any model loads, one line each naming FILE:LINE, exit 2,
nothing written; a changed input is never taken as done; every picture becomes RGB by the one
documented rule (plan/inputs.py): EXIF orientation, alpha over white, palette, 16-bit, CMYK."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import left_behind, manifest, write_prompts
from flux_batch.plan.inputs import InputReader, load_rgb, to_rgb

SMALL = ("sampler.steps=1", "runtime.progress=false")


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that claims width x height: what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def png(size=(64, 64), colour="red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


# name -> (files to write, the row's image value, what the one line says after FILE:LINE)
BAD = {
    "missing": ({}, "gone.png", "input image 'gone.png' not found"),
    "a folder": ({"sub/x.png": png()}, "sub", "input image 'sub' is a directory"),
    "not an image": ({"notes.png": b"just some text\n"}, "notes.png", "is not an image Pillow can read"),
    "truncated": ({"cut.png": png()[:60]}, "cut.png", "input image 'cut.png' is damaged or truncated"),
    "over the pixel bound": (
        {"bomb.png": header_only_png(12000, 9000)},
        "bomb.png",
        "input image 'bomb.png' is 12000x9000 (108 million pixels); the limit is 100 million",
    ),
    "a decompression bomb": (
        {"huge.png": header_only_png(40000, 40000)},
        "huge.png",
        "input image 'huge.png' is over 100 million pixels",
    ),
    "too small": ({"tiny.png": png((8, 8))}, "tiny.png", "is 8x8; each side needs 16 pixels"),
    "too many for the family": (
        {"a.png": png(), "b.png": png()},
        ["a.png", "b.png"],
        "the row names 2 input images; FLUX.1 Kontext takes at most 1",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_input_is_one_line_naming_the_file_and_line_and_nothing_is_written(cli, case):
    files, image, said = BAD[case]
    for name, data in files.items():
        (cli.cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cli.cwd / name).write_bytes(data)
    (cli.cwd / "fine.png").write_bytes(png())
    prompts = write_prompts(
        cli.cwd / "edits.jsonl",
        [{"prompt": "make it blue", "image": "fine.png"}, {"prompt": "make it red", "image": image}],
    )
    result = cli(f"dataset.path={prompts}", "output.dir=out", *SMALL, model="tiny-kontext", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no Pillow warning, no traceback
    assert lines[0].startswith(f"flux-batch: error: {prompts}:2: ") or lines[0].startswith(
        "flux-batch: error: edits.jsonl:2: "
    ), lines[0]
    assert said in lines[0]
    assert left_behind(cli.cwd / "out") == []


def test_an_input_for_a_family_that_takes_none_is_refused(cli):
    (cli.cwd / "a.png").write_bytes(png())
    prompts = write_prompts(cli.cwd / "p.jsonl", [{"prompt": "make it blue", "image": "a.png"}])
    result = cli(f"dataset.path={prompts}", "output.dir=out", *SMALL, check=False)  # model=tiny: FLUX.1
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "p.jsonl:1: the row names an input image, but model.family=flux1 (FLUX.1) takes none" in line
    assert left_behind(cli.cwd / "out") == []


@pytest.mark.parametrize(
    "args, said",
    [
        (("dataset.images=nowhere", "dataset.instruction=make it blue"), "dataset.images is not a folder"),
        (("dataset.images=empty", "dataset.instruction=make it blue"), "no images in dataset.images"),
        (("dataset.images=empty",), "dataset.instruction"),
    ],
    ids=["not a folder", "no images", "no instruction"],
)
def test_a_bad_folder_of_inputs_is_one_line(cli, args, said):
    (cli.cwd / "empty").mkdir()
    (cli.cwd / "empty" / "readme.txt").write_text("no pictures here")
    result = cli(*args, "output.dir=out", *SMALL, model="tiny-kontext", check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert said in line
    assert left_behind(cli.cwd / "out") == []


def test_a_changed_input_under_an_explicit_id_is_refused_never_done(cli):
    (cli.cwd / "a.png").write_bytes(png(colour="red"))
    prompts = write_prompts(
        cli.cwd / "p.jsonl", [{"id": "edit-1", "prompt": "make it blue", "image": "a.png"}]
    )
    args = (f"dataset.path={prompts}", "output.dir=out", *SMALL)
    cli(*args, model="tiny-kontext")
    before = (cli.cwd / "out" / "metadata.jsonl").read_bytes()
    (cli.cwd / "a.png").write_bytes(png(colour="green"))
    result = cli(*args, model="tiny-kontext", check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "p.jsonl:1: input image 'a.png' of id 'edit-1' changed since it was rendered" in line
    assert (cli.cwd / "out" / "metadata.jsonl").read_bytes() == before  # nothing reported done or lost
    (cli.cwd / "a.png").write_bytes(png(colour="red"))  # the bytes it was rendered from: done again
    again = cli(*args, model="tiny-kontext")
    assert again.stdout.strip().splitlines()[-1].endswith("nothing to do, all 1 items already done")
    assert len(manifest(cli.cwd / "out")) == 1


def test_an_input_changed_after_planning_fails_its_item_instead_of_rendering_other_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(png(colour="red"))
    checked = InputReader(tmp_path).read("a.png")
    assert load_rgb(checked).getpixel((0, 0)) == (255, 0, 0)
    (tmp_path / "a.png").write_bytes(png(colour="blue"))
    with pytest.raises(OSError, match="changed since the run started"):
        load_rgb(checked)


# --- one rule to RGB ---------------------------------------------------------------------------


def test_exif_orientation_is_honoured(tmp_path):
    picture = Image.new("RGB", (40, 20), "white")
    picture.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    picture.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    read = InputReader(tmp_path).read("phone.jpg")
    assert (read.width, read.height) == (20, 40)  # the record's size is as shown, portrait
    rgb = np.asarray(load_rgb(read))
    assert rgb.shape == (40, 20, 3)
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 1] < 60  # the red band is now at the top
    assert rgb[-3, 10].min() > 200


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = to_rgb(rgba)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent: white, not its hidden red
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((1, 0)))  # half black over white
    la = to_rgb(Image.new("LA", (16, 16), (0, 0)))
    assert la.getpixel((3, 3)) == (255, 255, 255)


def test_palette_images_expand_and_their_transparency_is_white():
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (0, 200, 0)
    palette.info["transparency"] = 1
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 32768, 65535, 1000]] * 16, dtype=np.uint16).repeat(4, axis=1))
    assert deep.mode.startswith("I;16")
    row = np.asarray(to_rgb(deep))[0, ::4, 0]
    assert row.tolist() == [0, 128, 255, 4]  # a clip would give 255 for all but the first


def test_cmyk_converts_by_pillows_rule():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


def test_a_wide_input_keeps_its_aspect_at_the_models_area(cli):
    (cli.cwd / "wide.png").write_bytes(png((200, 100)))
    prompts = write_prompts(cli.cwd / "p.jsonl", [{"prompt": "make it blue", "image": "wide.png"}])
    cli(f"dataset.path={prompts}", "output.dir=out", *SMALL, model="tiny-kontext")
    [record] = manifest(cli.cwd / "out")
    assert record["width"] > record["height"]
    assert record["width"] % 16 == 0 and record["height"] % 16 == 0
    assert abs(record["width"] * record["height"] - 64 * 64) <= 64 * 64 * 0.25
    assert Path(cli.cwd / "out" / record["file_name"]).exists()


def test_an_input_changed_mid_run_fails_its_item_and_the_next_run_renders_it(cli):
    import os
    import signal

    from conftest import wait_until_stopped

    for name, colour in (("a.png", "red"), ("b.png", "green")):
        (cli.cwd / name).write_bytes(png(colour=colour))
    prompts = write_prompts(
        cli.cwd / "p.jsonl",
        [{"id": f"edit-{n}", "prompt": "make it blue", "image": n} for n in ("a.png", "b.png")],
    )
    args = (f"dataset.path={prompts}", "output.dir=out", *SMALL, "model=tiny-kontext")
    proc = cli.popen(*args, env={"FLUX_BATCH_CRASH": "input_read:2:stop"}, model=None)
    wait_until_stopped(proc)  # b.png checked and hashed, about to be read for its encode
    (cli.cwd / "b.png").write_bytes(png(colour="purple"))
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert "rendered 1, skipped 0 already done, failed 1" in out, out + err
    [error] = [json.loads(line) for line in (cli.cwd / "out" / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "edit-b.png" and "changed since the run started" in error["reason"]
    assert [r["id"] for r in manifest(cli.cwd / "out")] == ["edit-a.png"]
    again = cli(*args, model=None)
    assert "rendered 1, skipped 1 already done, failed 0" in again.stdout
    record = {r["id"]: r for r in manifest(cli.cwd / "out")}["edit-b.png"]
    assert record["inputs"][0]["sha256"] == hashlib.sha256((cli.cwd / "b.png").read_bytes()).hexdigest()
