"""The edit variant's world: instructions that change one thing about a demo picture, and the
(input, output) picture pairs they describe.

Two edits: recolour ("the circle in blue", "make it blue": same shape, size and place, another
colour) and move ("on the left", "move it to the left": same shape, size and colour, another
place). The words that say what to do (colours, shapes, positions) are caption words, each one
token of the demo's tokenizers; the other words of the spoken forms ("make", "move", "it", "to") are
outside that vocabulary and are read as letters, which is harmless because they carry nothing
the colour or position word does not. Pairs are drawn with `shapes.layout` and `shapes.paint`,
the output being the input's layout with one part changed, so everything else is kept exactly.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from PIL import Image

from flux_batch.demo.shapes import (
    COLOURS,
    JITTER,
    POSITIONS,
    SHAPES,
    SIZES,
    Caption,
    Layout,
    jittered,
    layout,
    paint,
)

TEMPLATES = {  # kind -> forms without and with the shape named, in caption words and spoken
    "colour": (("in {value}", "the {shape} in {value}"), ("make it {value}", "make the {shape} {value}")),
    "position": (
        ("{phrase}", "the {shape} {phrase}"),
        ("move it to the {value}", "move the {shape} to the {value}"),
    ),
}


@dataclass(frozen=True)
class Edit:
    kind: str  # the attribute it changes: "colour" or "position"
    value: str  # the new colour, or the new position's name
    shape: Optional[str] = None  # the shape the instruction names, if any
    spoken: bool = False  # "make it blue" rather than "in blue"

    def text(self) -> str:
        template = TEMPLATES[self.kind][self.spoken][self.shape is not None]
        phrase = POSITIONS[self.value][0] if self.kind == "position" else ""
        return template.format(value=self.value, shape=self.shape, phrase=phrase)


def all_edits() -> list[Edit]:
    """Every instruction of the grammar (11 values x 4 shapes-or-none x 2 forms = 88)."""
    return [
        Edit(kind, value, shape, spoken)
        for kind, values in (("colour", COLOURS), ("position", POSITIONS))
        for value in values
        for shape in (None, *SHAPES)
        for spoken in (False, True)
    ]


def parse_instruction(text: str) -> Optional[Edit]:
    """The edit an instruction asks for, or None when it names neither one new colour nor one
    new position (or both)."""
    words = text.lower().replace(",", " ").split()
    positions = {"centre" if w == "center" else w for w in words if w in POSITIONS or w == "center"}
    colours = {w for w in words if w in COLOURS}
    shape = next((w for w in words if w in SHAPES), None)
    spoken = bool({"make", "move"} & set(words))
    if len(positions) == 1 and not colours:
        return Edit("position", positions.pop(), shape, spoken)
    if len(colours) == 1 and not positions:
        return Edit("colour", colours.pop(), shape, spoken)
    return None


def apply(edit: Edit, before: Layout, rng: random.Random) -> Layout:
    """`before` with the edit made: a fresh jitter for the new colour or place, all else kept."""
    if edit.kind == "colour":
        return replace(before, rgb=jittered(edit.value, rng))
    x, y = POSITIONS[edit.value][1]
    return replace(before, cx=x + rng.uniform(-JITTER, JITTER), cy=y + rng.uniform(-JITTER, JITTER))


@dataclass(frozen=True)
class Pair:
    caption: Caption  # what the input shows (size and position always stated)
    edit: Edit
    before: Layout
    after: Layout

    def pictures(self) -> tuple[Image.Image, Image.Image]:
        return paint(self.before), paint(self.after)


def make_pair(caption: Caption, edit: Edit, rng: random.Random) -> Pair:
    before = layout(caption, rng)
    return Pair(caption, edit, before, apply(edit, before, rng))


def random_pair(rng: random.Random, move_share: float = 0.5) -> Pair:
    """A random input and an edit that changes it (never to what it already is): a move with
    probability `move_share`, else a recolour; the shape is named half the time, and the
    spoken form is used half the time."""
    caption = Caption(
        rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
    )
    kind = "position" if rng.random() < move_share else "colour"
    now = caption.colour if kind == "colour" else caption.position
    value = rng.choice([v for v in (COLOURS if kind == "colour" else POSITIONS) if v != now])
    edit = Edit(kind, value, caption.shape if rng.random() < 0.5 else None, rng.random() < 0.5)
    return make_pair(caption, edit, rng)


def eval_pairs(seed: int = 2026) -> list[Pair]:
    """The fixed evaluation set: each new colour x shape (18 recolours) and each new position x
    shape (15 moves), from inputs of another random colour or place, random size; the shape
    named and the spoken form alternating."""
    rng = random.Random(seed)
    pairs = []
    for kind, values in (("colour", list(COLOURS)), ("position", list(POSITIONS))):
        for i, (value, shape) in enumerate((v, s) for v in values for s in SHAPES):
            colour = rng.choice([c for c in COLOURS if kind != "colour" or c != value])
            position = rng.choice([p for p in POSITIONS if kind != "position" or p != value])
            caption = Caption(colour, shape, rng.choice(list(SIZES)), position)
            edit = Edit(kind, value, shape if i % 2 else None, (i // 2) % 2 == 1)
            pairs.append(make_pair(caption, edit, rng))
    return pairs


EVAL_SET = "demo-edit-eval"  # the shipped set: prompts/demo-edit-eval.jsonl and its pictures


def write_eval_set(folder: Path) -> Path:
    """The fixed evaluation set into `folder`: `demo-edit-eval.jsonl`, one row per pair (id,
    instruction, input picture), and the input pictures in `demo-edit-eval/`, as PNG."""
    pictures = folder / EVAL_SET
    pictures.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, pair in enumerate(eval_pairs(), start=1):
        name = f"{EVAL_SET}/{n:02d}.png"
        pair.pictures()[0].save(folder / name, optimize=True)
        rows.append({"id": f"edit-{n:02d}", "prompt": pair.edit.text(), "image": name})
    out = folder / f"{EVAL_SET}.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


if __name__ == "__main__":  # python -m flux_batch.demo.edits flux_batch/prompts
    print(write_eval_set(Path(sys.argv[1])))
