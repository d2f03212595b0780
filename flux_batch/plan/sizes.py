"""Image sizes from an aspect ratio and an area: `16:9` at 1 megapixel -> 1360x768.

A megapixel here is 1024 x 1024 pixels (FLUX's native size), so `megapixels=1` keeps the
pixel count of the default 1024x1024 image. Both sides are rounded to multiples of 16.
"""

from __future__ import annotations

import math
import re

ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x]\s*(\d+(?:\.\d+)?)\s*$")
MEGAPIXEL = 1024 * 1024
MAX_RATIO = 8.0  # wider or taller than 8:1 is almost surely a typo


def parse_aspect(text: str) -> float:
    """Width / height of `W:H` (or `WxH`); ValueError says what is wrong."""
    match = ASPECT.match(text)
    if not match or float(match[1]) <= 0 or float(match[2]) <= 0:
        raise ValueError(f"expected an aspect ratio as W:H with positive numbers, e.g. 16:9, got {text!r}")
    ratio = float(match[1]) / float(match[2])
    if not 1 / MAX_RATIO <= ratio <= MAX_RATIO:
        raise ValueError(f"aspect ratio {text} is beyond {MAX_RATIO:g}:1")
    return ratio


def round16(value: float) -> int:
    return max(16, int(round(value / 16)) * 16)


def size_for(aspect: str, pixels: float) -> tuple[int, int]:
    """(width, height) of about `pixels` pixels in the ratio `aspect`, multiples of 16."""
    return size_of_ratio(parse_aspect(aspect), pixels)


def size_of_ratio(ratio: float, pixels: float) -> tuple[int, int]:
    """(width, height) of about `pixels` pixels with width / height = `ratio`, multiples of 16."""
    return round16(math.sqrt(pixels * ratio)), round16(math.sqrt(pixels / ratio))


def default_size(sampler) -> tuple[int, int]:
    """The run's image size: sampler.aspect at sampler.megapixels, else width x height."""
    if sampler.aspect is None:
        return sampler.width, sampler.height
    return size_for(str(sampler.aspect), area(sampler))


def area(sampler) -> float:
    """Pixels an aspect ratio is fitted to: megapixels if set, else width x height."""
    if sampler.megapixels is not None:
        return sampler.megapixels * MEGAPIXEL
    return sampler.width * sampler.height
