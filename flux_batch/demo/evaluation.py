"""Scoring a finished run of demo prompts: accuracy per attribute, and PSNR against another
run of the same items (e.g. Q8_0 against the unquantized transformer)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from flux_batch.demo.scoring import matches, psnr, read
from flux_batch.demo.shapes import parse
from flux_batch.errors import FluxBatchError
from flux_batch.store.manifest import read_records
from flux_batch.store.names import MANIFEST
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


def evaluate(run_dir: Path, reference: Optional[Path] = None) -> dict:
    """The scores of a run as a JSON-ready dict (what eval.json holds)."""
    records = load_records(run_dir)
    images = RunImages(run_dir)
    items, skipped = [], []
    for record in records:
        caption = parse(record["prompt"])
        if caption is None:
            skipped.append(record["id"])
            continue
        reading = read(pixels_of(images, record))
        items.append(
            {
                "id": record["id"],
                "k": record["k"],
                "prompt": record["prompt"],
                "seed": record["seed"],
                "file_name": record["file_name"],
                "read": {k: v for k, v in vars(reading).items()},
                "correct": matches(caption, reading),
            }
        )
    result = {
        "run_dir": str(run_dir),
        "model": _common(records, "model"),
        "quant": _common(records, "quant"),
        "images": len(records),
        "scored": len(items),
        "outside_grammar": skipped,
        "accuracy": accuracy(items),
    }
    if reference is not None:
        result["psnr"] = compare(run_dir, records, reference)
    result["items"] = items
    return result


def _common(records: list[dict], key: str):
    values = {r.get(key) for r in records}
    return values.pop() if len(values) == 1 else sorted(map(str, values))


def accuracy(items: list[dict]) -> dict:
    table = {}
    for attribute in ATTRIBUTES:
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
        f"{'attribute':<10} {'right':>6} {'total':>6} {'accuracy':>9}",
    ]
    for attribute, row in result["accuracy"].items():
        shown = f"{100 * row['accuracy']:.1f}%" if row["accuracy"] is not None else "-"
        lines.append(f"{attribute:<10} {row['right']:>6} {row['total']:>6} {shown:>9}")
    if "psnr" in result:
        p = result["psnr"]
        lines.append(
            f"PSNR against {p['reference']}: mean {p['mean_db']:.2f} dB, "
            f"min {p['min_db']:.2f} dB over {p['pairs']} images"
        )
    return "\n".join(lines)
