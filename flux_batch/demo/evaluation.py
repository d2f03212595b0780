"""Scoring a finished run of demo prompts: accuracy per attribute, and PSNR against another
run of the same items (e.g. Q8_0 against the unquantized transformer). An item rendered from
an input picture (model=demo-edit) is scored as an edit: the input and the output are both
read back, and the output must show the instructed change and keep the input's other
attributes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from flux_batch.demo.edits import parse_instruction
from flux_batch.demo.scoring import EDIT_CHECKS, edit_matches, matches, psnr, read
from flux_batch.demo.shapes import parse
from flux_batch.errors import FluxBatchError
from flux_batch.store.input_files import COPY
from flux_batch.store.manifest import read_records
from flux_batch.store.names import MANIFEST, RUN_INFO
from flux_batch.store.reader import RunImages

ATTRIBUTES = ("colour", "shape", "size", "position")


def load_records(run_dir: Path) -> list[dict]:
    if not (run_dir / MANIFEST).is_file():
        raise FluxBatchError(f"{run_dir}: not a flux-batch run directory (no {MANIFEST})")
    return read_records(run_dir)


def pixels_of(images: RunImages, record: dict) -> np.ndarray:
    path = images.run_dir / record["file_name"]
    try:
        return np.asarray(Image.open(io.BytesIO(images.read(record["file_name"]))).convert("RGB"))
    except OSError as e:
        raise FluxBatchError(f"{path}: cannot read the image ({e})") from None


def evaluate(run_dir: Path, reference: Optional[Path] = None, inputs: Optional[Path] = None) -> dict:
    """The scores of a run as a JSON-ready dict (what eval.json holds). `inputs`: the folder
    the records' input paths are relative to (by default the run's prompt file's folder, or
    its dataset.images, as run.json says)."""
    records = load_records(run_dir)
    images = RunImages(run_dir)
    items, edits, skipped = [], [], []
    pictures = InputPictures(images, inputs)
    for record in records:
        if record.get("inputs"):
            edit = parse_instruction(record["prompt"])
            if edit is None or len(record["inputs"]) != 1:
                skipped.append(record["id"])
                continue
            before = read(pictures.pixels(record["inputs"][0]))
            after = read(pixels_of(images, record))
            edits.append(
                {
                    **_item(record),
                    "input": record["inputs"][0]["path"],
                    "edit": {"kind": edit.kind, "value": edit.value},
                    "read_input": vars(before),
                    "read": vars(after),
                    "correct": edit_matches(edit.kind, edit.value, before, after),
                }
            )
            continue
        caption = parse(record["prompt"])
        if caption is None:
            skipped.append(record["id"])
            continue
        reading = read(pixels_of(images, record))
        items.append({**_item(record), "read": vars(reading), "correct": matches(caption, reading)})
    result = {
        "run_dir": str(run_dir),
        "model": _common(records, "model"),
        "quant": _common(records, "quant"),
        "images": len(records),
        "scored": len(items) + len(edits),
        "outside_grammar": skipped,
        "accuracy": accuracy(items),
    }
    if edits:
        result["edits"] = len(edits)
        result["edit_accuracy"] = accuracy(edits, EDIT_CHECKS)
        result["edit_accuracy_by_kind"] = {
            kind: accuracy([e for e in edits if e["edit"]["kind"] == kind], EDIT_CHECKS)
            for kind in ("colour", "position")
        }
    if reference is not None:
        result["psnr"] = compare(run_dir, records, reference)
    result["items"] = items + edits
    return result


def _item(record: dict) -> dict:
    return {k: record[k] for k in ("id", "k", "prompt", "seed", "file_name")}


class InputPictures:
    """The input pictures of a run's records: the run's own copy where the record names one
    (`copy`), else the file where the run read it; checked against the hash the record
    keeps (a changed file would score another edit)."""

    def __init__(self, images: RunImages, folder: Optional[Path]):
        self.images = images
        self.given = folder is not None  # --inputs: the originals there, not the run's copies
        self.folder = folder
        self.seen: dict[str, np.ndarray] = {}  # by SHA-256: an input many items share is read once

    def pixels(self, entry: dict) -> np.ndarray:
        from flux_batch.plan.inputs import to_rgb

        if entry["sha256"] not in self.seen:
            path, data = self._bytes(entry)
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise FluxBatchError(f"{path}: not the input the run read (its SHA-256 differs)")
            self.seen[entry["sha256"]] = np.asarray(to_rgb(Image.open(io.BytesIO(data))))
        return self.seen[entry["sha256"]]

    def _bytes(self, entry: dict) -> tuple[Path, bytes]:
        copy = entry.get(COPY)
        if copy and not self.given:
            try:
                return self.images.run_dir / copy, self.images.read(copy)
            except OSError:
                pass  # the copy is gone: the original, where the run read it
        if self.folder is None:
            self.folder = input_folder(self.images.run_dir)
        path = self.folder / entry["path"]
        try:
            return path, path.read_bytes()
        except OSError as e:
            raise FluxBatchError(
                f"{path}: cannot read the input image ({e.strerror or e}); pass --inputs DIR, "
                "the folder its path is relative to"
            ) from None


def input_folder(run_dir: Path) -> Path:
    """The folder a run's input paths are relative to, as its run.json's config says."""
    from flux_batch.plan.prompts import find_prompt_file

    try:
        dataset = json.loads((run_dir / RUN_INFO).read_text())["config"]["dataset"]
    except (OSError, ValueError, KeyError) as e:
        raise FluxBatchError(
            f"{run_dir}: no dataset in {RUN_INFO} ({e}) to find the input images by; pass --inputs DIR"
        ) from None
    if dataset.get("images"):
        return Path(dataset["images"]).expanduser()
    return find_prompt_file(dataset["path"]).parent


def _common(records: list[dict], key: str):
    values = {r.get(key) for r in records}
    return values.pop() if len(values) == 1 else sorted(map(str, values))


def accuracy(items: list[dict], checks=ATTRIBUTES) -> dict:
    table = {}
    for attribute in checks:
        stated = [i["correct"][attribute] for i in items if i["correct"][attribute] is not None]
        table[attribute] = {
            "right": sum(stated),
            "total": len(stated),
            "accuracy": round(sum(stated) / len(stated), 4) if stated else None,
        }
    return table


def compare(run_dir: Path, records: list[dict], reference: Path) -> dict:
    """PSNR of each image against the reference run's image of the same (id, k)."""
    theirs = {(r["id"], r["k"]): r for r in load_records(reference)}
    ours, their_images = RunImages(run_dir), RunImages(reference)
    values = [
        psnr(pixels_of(ours, r), pixels_of(their_images, theirs[(r["id"], r["k"])]))
        for r in records
        if (r["id"], r["k"]) in theirs
    ]
    if not values:
        raise FluxBatchError(f"{reference}: holds none of the items of {run_dir}")
    return {
        "reference": str(reference),
        "pairs": len(values),
        "mean_db": round(float(np.mean(values)), 2),
        "min_db": round(float(np.min(values)), 2),
    }


def table(result: dict) -> str:
    """The scores as the text table flux-batch-eval prints."""
    lines = [
        f"{result['run_dir']}: {result['scored']} of {result['images']} images scored "
        f"(model {result['model']}, quant {result['quant']})",
    ]
    if result["scored"] > result.get("edits", 0) or not result.get("edits"):
        lines.append(f"{'attribute':<10} {'right':>6} {'total':>6} {'accuracy':>9}")
        lines += _rows(result["accuracy"])
    if result.get("edits"):
        by_kind = result["edit_accuracy_by_kind"]
        lines.append(
            f"edits: {result['edits']} ({by_kind['colour']['edited']['total']} recolour, "
            f"{by_kind['position']['edited']['total']} move); edited: shows the change asked, "
            "others: kept from the input"
        )
        lines.append(f"{'check':<10} {'right':>6} {'total':>6} {'accuracy':>9} {'recolour':>9} {'move':>9}")
        for check, row in result["edit_accuracy"].items():
            kinds = "".join(f" {_percent(by_kind[kind][check]):>9}" for kind in ("colour", "position"))
            lines.append(f"{check:<10} {row['right']:>6} {row['total']:>6} {_percent(row):>9}{kinds}")
    if "psnr" in result:
        p = result["psnr"]
        lines.append(
            f"PSNR against {p['reference']}: mean {p['mean_db']:.2f} dB, "
            f"min {p['min_db']:.2f} dB over {p['pairs']} images"
        )
    return "\n".join(lines)


def _rows(table: dict) -> list[str]:
    return [
        f"{attribute:<10} {row['right']:>6} {row['total']:>6} {_percent(row):>9}"
        for attribute, row in table.items()
    ]


def _percent(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f}%" if row["accuracy"] is not None else "-"
