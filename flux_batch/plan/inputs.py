"""Input images: the files a row names in its `image` column (or `dataset.images=DIR` lists),
checked whole before any model loads, and read as RGB pictures by one documented rule.

Each input is read once per plan: its bytes are hashed (the SHA-256 an auto id and the record
carry), its header is checked against the pixel bound before anything is decoded (a
decompression bomb never reaches the decoder), and it is decoded in full, so a truncated file
is refused here rather than failing its items mid-run.

How a picture becomes RGB (`to_rgb`), whatever its file holds:
- EXIF orientation is applied first (a phone's portrait JPEG is portrait);
- alpha (RGBA, LA, a palette with transparency) is composited over white, as a viewer shows it;
- palette, greyscale and 1-bit pictures are expanded to RGB;
- 16-bit and 32-bit greyscale is scaled to 8 bits (65535 -> 255), never clipped;
- CMYK (and YCbCr, LAB, HSV) convert with Pillow's own conversion, ignoring ICC profiles.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from flux_batch.errors import PromptFileError

if TYPE_CHECKING:
    from PIL import Image

# 100 million pixels (a 12,000 x 8,000 scan) and more: refused before decoding. The largest
# phone sensors give about 50 MP; a bigger "image" is most often a decompression bomb.
MAX_INPUT_PIXELS = 100_000_000
# The smallest side a family's VAE can encode at all (one latent patch of 16 pixels).
MIN_INPUT_SIDE = 16
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class InputImage:
    """One input file of a row: as the row names it, where it is, what it holds."""

    path: str  # as the row (or dataset.images) names it: relative to the prompt file's folder
    file: Path  # the absolute file read
    sha256: str  # of the file's bytes
    width: int  # after EXIF orientation
    height: int
    format: str  # Pillow's name: PNG, JPEG, WEBP...

    @property
    def extension(self) -> str:
        """The file's extension by its content: what a copy of its bytes is named with."""
        return {"JPEG": ".jpg", "TIFF": ".tif"}.get(self.format, f".{self.format.lower()}")

    def record(self) -> dict[str, str]:
        """The entry of the manifest record's `inputs`."""
        return {"path": self.path, "sha256": self.sha256}

    def checked_bytes(self) -> bytes:
        """The file's bytes, or OSError when it has gone or no longer holds what the plan
        hashed (its item then fails; it is never rendered, copied or scored from other bytes)."""
        data = self.file.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise OSError(f"input image {self.path!r} changed since the run started ({self.file})")
        return data


class InputReader:
    """Reads and checks input files, each once however many rows name it."""

    def __init__(self, folder: Path):
        self.folder = folder  # relative paths are read from here: the prompt file's folder
        self._read: dict[Path, InputImage | str] = {}

    def resolve(self, path: str) -> Path:
        return (self.folder / Path(path).expanduser()).resolve()

    def read(self, path: str) -> InputImage:
        """The input `path` names, or ValueError saying what is wrong with it (one clause)."""
        file = self.resolve(path)
        if file not in self._read:
            try:
                self._read[file] = inspect(path, file)
            except ValueError as e:
                self._read[file] = str(e)
        found = self._read[file]
        if isinstance(found, str):
            raise ValueError(found)
        return found if found.path == path else replace(found, path=path)  # two names, one file


def inspect(path: str, file: Path) -> InputImage:
    """Hash, bound and fully decode one file; ValueError naming what is wrong."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"input image {path!r} not found ({file})") from None
    except IsADirectoryError:
        raise ValueError(f"input image {path!r} is a directory") from None
    except OSError as e:
        raise ValueError(f"input image {path!r} cannot be read ({e.strerror or e})") from None
    try:
        with _open(data) as image:
            width, height = image.size
            if width * height > MAX_INPUT_PIXELS:
                raise ValueError(
                    f"input image {path!r} is {width}x{height} ({width * height / 1e6:.0f} million "
                    f"pixels); the limit is {MAX_INPUT_PIXELS / 1e6:.0f} million"
                )
            image.load()  # a truncated or corrupt file fails here, not mid-run
            oriented = ImageOps.exif_transpose(image)
            width, height = oriented.size
            fmt = image.format or "PNG"
    except UnidentifiedImageError:
        raise ValueError(f"input image {path!r} is not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"input image {path!r} is over {MAX_INPUT_PIXELS / 1e6:.0f} million pixels ({e})"
        ) from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"input image {path!r} is damaged or truncated ({e})") from None
    if min(width, height) < MIN_INPUT_SIDE:
        raise ValueError(f"input image {path!r} is {width}x{height}; each side needs {MIN_INPUT_SIDE} pixels")
    return InputImage(path, file, hashlib.sha256(data).hexdigest(), width, height, fmt)


def read_inputs(reader: InputReader, paths: Iterable[str]) -> tuple[tuple[InputImage, ...], list[str]]:
    """The inputs a row names, and what is wrong with them (one clause each)."""
    found, problems = [], []
    for path in paths:
        try:
            found.append(reader.read(path))
        except ValueError as e:
            problems.append(str(e))
    return tuple(found), problems


def load_rgb(image: InputImage) -> Image.Image:
    """The input as an 8-bit RGB picture, by the module's rule; OSError when the file has gone
    or changed since it was checked (InputImage.checked_bytes)."""
    with _open(image.checked_bytes()) as opened:
        return to_rgb(opened)


def _open(data: bytes) -> Image.Image:
    """The picture in `data`, opened lazily. Pillow warns above 89 million pixels, below our own
    bound (which is checked before decoding): the warning would add lines to a run's output."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow picture as 8-bit RGB: oriented, alpha over white, deep greyscale scaled."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def images_in(folder: str | os.PathLike) -> list[str]:
    """The image files directly in `folder`, sorted by name (what `dataset.images` lists)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise PromptFileError([f"{root}: dataset.images is not a folder"])
    names = sorted(p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not names:
        raise PromptFileError(
            [f"{root}: no images in dataset.images (looked for {', '.join(IMAGE_EXTENSIONS)})"]
        )
    return names


def resolve_rows(rows: list, source: str, reader: InputReader, family) -> None:
    """Check and hash every row's input images into `row.inputs`, or PromptFileError naming
    `source:LINE` for each bad row; `family` (families.base.Family) says how many images a row
    may name (none for a family without image inputs)."""
    problems: list[str] = []
    most = family.max_references
    for row in rows:
        if not row.images:
            continue
        if most == 0:
            problems.append(
                f"{source}:{row.line}: the row names an input image, but model.family={family.name} "
                f"({family.label}) takes none; use an editing model (model=flux-kontext, flux2-dev, "
                "flux2-klein-4b) or drop the column"
            )
            continue
        if len(row.images) > most:
            problems.append(
                f"{source}:{row.line}: the row names {len(row.images)} input images; {family.label} "
                f"takes at most {most}"
            )
            continue
        row.inputs, found = read_inputs(reader, row.images)
        problems.extend(f"{source}:{row.line}: {problem}" for problem in found)
    if problems:
        raise PromptFileError(problems)


def folder_rows(folder: str | os.PathLike, instruction: str) -> list:
    """One row per image in `folder`, sorted by name, each with `instruction` as its prompt;
    a row's line is its place in that order."""
    from flux_batch.plan.prompts import Row

    if not instruction or not instruction.strip():
        raise PromptFileError(
            ["dataset.instruction: empty; dataset.images needs the instruction each image gets"]
        )
    return [
        Row(line, instruction.strip(), None, images=(name,))
        for line, name in enumerate(images_in(folder), start=1)
    ]
