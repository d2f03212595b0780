"""Reading a demo picture back: which colour, shape, size and position it shows.

The shape is the largest connected region that differs from the background (the median of
the image border). Its colour is the nearest palette hue to the region's median hue; its
shape comes from how much of its bounding box it fills (a square fills all of it, a circle
pi/4, a triangle half); its size from the box's side, its position from the box's centre.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from flux_batch.demo.shapes import COLOURS, SIZE, SIZES, Caption

MIN_CONTRAST = 40.0  # RGB distance from the background below which nothing is drawn
MIN_PIXELS = 12
FILL_SQUARE = 0.875  # above: square; between: circle (pi/4 = 0.785); below: triangle (0.5)
FILL_TRIANGLE = 0.665
CENTRE_RADIUS = 7  # pixels from the middle within which a shape is "in the centre"


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))[0] * 360


PALETTE_HUES = {name: _hue(rgb) for name, rgb in COLOURS.items()}
LARGE_SIDE = SIZES["small"][1] + SIZES["large"][0]  # a side between the small and large ranges


@dataclass(frozen=True)
class Reading:
    """What a picture shows; all None when it shows no shape."""

    colour: Optional[str] = None
    shape: Optional[str] = None
    size: Optional[str] = None
    position: Optional[str] = None
    fill: Optional[float] = None
    hue: Optional[float] = None
    x: Optional[float] = None  # the box's centre, pixels
    y: Optional[float] = None
    side: Optional[float] = None  # the box's mean side, pixels


def read(image: np.ndarray) -> Reading:
    """The reading of an (H, W, 3) uint8 picture."""
    from scipy import ndimage

    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    peak = np.percentile(distance, 99.5)
    if peak < MIN_CONTRAST:
        return Reading()
    labels, count = ndimage.label(distance > max(MIN_CONTRAST, peak / 2))
    if count == 0:
        return Reading()
    sizes = ndimage.sum(np.ones_like(distance), labels, range(1, count + 1))
    region = labels == 1 + int(np.argmax(sizes))
    if region.sum() < MIN_PIXELS:
        return Reading()
    ys, xs = np.nonzero(region)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = float(region.sum() / (width * height))
    hue = _median_hue(image[region])
    x, y = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    return Reading(
        colour=min(PALETTE_HUES, key=lambda name: _hue_gap(hue, PALETTE_HUES[name])),
        shape="square" if fill > FILL_SQUARE else "circle" if fill > FILL_TRIANGLE else "triangle",
        size="large" if (width + height) / 2 > LARGE_SIDE else "small",
        position=_position(x, y),
        fill=round(fill, 3),
        hue=round(hue, 1),
        x=float(x),
        y=float(y),
        side=float((width + height) / 2),
    )


def _median_hue(rgb: np.ndarray) -> float:
    """Circular median-ish hue: the median of hues measured from the mean hue's opposite."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in rgb.astype(float)])
    angles = hsv[:, 0] * 2 * math.pi
    mean = math.atan2(np.sin(angles).mean(), np.cos(angles).mean())
    relative = (angles - mean + math.pi) % (2 * math.pi) - math.pi
    return math.degrees(mean + float(np.median(relative))) % 360


def _hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def _position(x: float, y: float) -> str:
    dx, dy = x - (SIZE - 1) / 2, y - (SIZE - 1) / 2
    if max(abs(dx), abs(dy)) < CENTRE_RADIUS:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def matches(caption: Caption, reading: Reading) -> dict[str, Optional[bool]]:
    """Per attribute: whether the picture shows what the caption says (None: not stated)."""
    return {
        "colour": reading.colour == caption.colour,
        "shape": reading.shape == caption.shape,
        "size": None if caption.size is None else reading.size == caption.size,
        "position": None if caption.position is None else reading.position == caption.position,
    }


EDIT_CHECKS = ("edited", "colour", "shape", "size", "position")
PLACE_PIXELS = 4.0  # a recoloured shape's centre moves less than this: it stays where it was


def edit_matches(kind: str, value: str, before: Reading, after: Reading) -> dict[str, Optional[bool]]:
    """Per check: whether the output shows the edit (`kind`, the attribute changed, now
    `value`) and keeps the input's other attributes (None: the attribute the edit changes).
    A recoloured shape keeps its position only if its centre stays within PLACE_PIXELS."""
    if before.shape is None or after.shape is None:  # nothing drawn: nothing kept or edited
        return {check: (None if check == kind else False) for check in EDIT_CHECKS}
    found = {"edited": getattr(after, kind) == value}
    for check in EDIT_CHECKS[1:]:
        found[check] = None if check == kind else getattr(after, check) == getattr(before, check)
    if kind != "position":
        moved = math.dist((before.x, before.y), (after.x, after.y))
        found["position"] = found["position"] and moved < PLACE_PIXELS
    return found


def psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> float:
    """Peak signal-to-noise ratio of two uint8 pictures in dB; identical pictures get `cap`."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return cap if mse == 0 else min(cap, 10 * math.log10(255.0**2 / mse))
