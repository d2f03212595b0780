"""The demo model's world: captions from a small grammar, and the 64x64 pictures they describe.

A caption names a colour and a shape, optionally a size and a position, e.g. "a large blue
triangle on the left". `draw` renders one with PIL: the shape, filled, on a plain light-grey
background. Everything not named in the caption (size, position, a little jitter) is drawn
from the random generator passed in, so a seed fixes the whole data stream.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageDraw

SIZE = 64  # image side, pixels
BACKGROUND = (235, 235, 235)
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (145, 55, 195),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (7.0, 9.0), "large": (14.0, 17.0)}  # half-width range, pixels
POSITIONS = {  # phrase and centre of the shape
    "left": ("on the left", (18, 32)),
    "right": ("on the right", (46, 32)),
    "top": ("at the top", (32, 18)),
    "bottom": ("at the bottom", (32, 46)),
    "centre": ("in the centre", (32, 32)),
}
JITTER = 2  # pixels of random offset around a position's centre


@dataclass(frozen=True)
class Caption:
    colour: str
    shape: str
    size: Optional[str] = None
    position: Optional[str] = None

    def text(self) -> str:
        words = ["a"] + ([self.size] if self.size else []) + [self.colour, self.shape]
        if self.position:
            words.append(POSITIONS[self.position][0])
        return " ".join(words)


def all_captions() -> list[Caption]:
    """Every caption the grammar makes (6 x 3 x 3 x 6 = 324)."""
    return [
        Caption(c, s, z, p)
        for c, s, z, p in itertools.product(COLOURS, SHAPES, (None, *SIZES), (None, *POSITIONS))
    ]


def vocabulary() -> list[str]:
    """Every word a caption can hold."""
    words = {"a", *COLOURS, *SHAPES, *SIZES}
    for phrase, _ in POSITIONS.values():
        words.update(phrase.split())
    return sorted(words)


def parse(prompt: str) -> Optional[Caption]:
    """The caption a prompt states, or None when it names no known colour and shape."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    if colour is None or shape is None:
        return None
    size = next((w for w in words if w in SIZES), None)
    position = next((w for w in words if w in POSITIONS or w == "center"), None)
    return Caption(colour, shape, size, "centre" if position == "center" else position)


def random_caption(rng: random.Random) -> Caption:
    """Each optional part is present half the time."""
    return Caption(
        rng.choice(list(COLOURS)),
        rng.choice(SHAPES),
        rng.choice(list(SIZES)) if rng.random() < 0.5 else None,
        rng.choice(list(POSITIONS)) if rng.random() < 0.5 else None,
    )


@dataclass(frozen=True)
class Layout:
    """Where and how one shape is drawn: what `draw` picks before painting, so that an edit
    can change one part of a picture and keep the rest exactly (flux_batch.demo.edits)."""

    shape: str
    half: float  # half-width, pixels
    cx: float  # centre, pixels
    cy: float
    rgb: tuple  # fill colour, jittered around the palette's


def layout(caption: Caption, rng: random.Random) -> Layout:
    """The layout of `caption`; unnamed size and position are chosen by `rng`."""
    size = caption.size or rng.choice(list(SIZES))
    position = caption.position or rng.choice(list(POSITIONS))
    half = rng.uniform(*SIZES[size])
    cx, cy = (c + rng.uniform(-JITTER, JITTER) for c in POSITIONS[position][1])
    return Layout(caption.shape, half, cx, cy, jittered(caption.colour, rng))


def jittered(colour: str, rng: random.Random) -> tuple:
    """The palette colour with a little per-channel noise, as every picture is drawn."""
    return tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in COLOURS[colour])


def paint(shape: Layout) -> Image.Image:
    """The picture of one laid-out shape on the background."""
    # drawn at 4x and scaled down, for anti-aliased edges
    scale = 4
    cx, cy, half = shape.cx, shape.cy, shape.half
    image = Image.new("RGB", (SIZE * scale, SIZE * scale), BACKGROUND)
    pen = ImageDraw.Draw(image)
    box = [(cx - half) * scale, (cy - half) * scale, (cx + half) * scale, (cy + half) * scale]
    if shape.shape == "circle":
        pen.ellipse(box, fill=shape.rgb)
    elif shape.shape == "square":
        pen.rectangle(box, fill=shape.rgb)
    else:  # pointing up; its base as wide as the square's side
        pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=shape.rgb)
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def draw(caption: Caption, rng: random.Random) -> Image.Image:
    """The picture of `caption`; unnamed size and position are chosen by `rng`."""
    return paint(layout(caption, rng))
