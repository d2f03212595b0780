"""Image encoding with the metadata other FLUX tools read.

PNG: a `parameters` text chunk in the infotext style (prompt, then `Steps: …, Seed: …`) and
the manifest record as JSON under `flux_batch`. JPEG/WebP: the infotext as EXIF UserComment.
The embedded record has no `sha256`: a file cannot hold its own hash.
"""

from __future__ import annotations

import io
import json
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# numpy and PIL are imported where used: a run with nothing to do never needs them.

EXTENSIONS = {"png": ".png", "webp": ".webp", "jpg": ".jpg"}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def infotext(
    record: dict[str, Any],
    sampler: str,
    model_label: str,
    extra: dict[str, str] | None = None,
    model_sha256: str | None = None,
) -> str:
    """`<prompt>\n[Negative prompt: …\n]Steps: …, Sampler: …, …` with `extra` fields last;
    `Model hash` is the file's SHA-256 cut to 10 hex digits, as AUTOMATIC1111 and Forge write it."""
    negative = record.get("negative_prompt")
    fields = {
        "Steps": record["steps"],
        "Sampler": sampler,
        "CFG scale": f"{record.get('true_cfg', 1):g}",
        "Distilled CFG Scale": f"{record['guidance']:g}",
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        **({"Model hash": model_sha256[:10]} if model_sha256 else {}),
        "Model": model_label,
        **({"Inputs": _inputs_text(record["inputs"])} if record.get("inputs") else {}),
        **(extra or {}),
    }
    return (
        f"{record['prompt']}\n"
        + (f"Negative prompt: {negative}\n" if negative else "")
        + ", ".join(f"{key}: {value}" for key, value in fields.items())
    )


def _inputs_text(inputs: list[dict]) -> str:
    """The input images as infotext carries them: `"name: sha256 (12 hex), ..."`, quoted as
    infotext quotes a value holding commas."""
    listed = ", ".join(f"{PurePath(i['path']).name}: {i['sha256'][:12]}" for i in inputs)
    return f'"{listed}"'


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] -> uint8, rounding as diffusers' numpy_to_pil does."""
    import numpy as np

    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def defect(image: np.ndarray) -> str | None:
    """Why a pipeline output must not be saved as a valid image, or None.

    All-black means every pixel is 0 once converted to 8 bits: what a NaN-poisoned or
    collapsed decode produces, and (unlike a merely dark image) never a real render.
    """
    import numpy as np

    if not np.isfinite(image).all():
        return "the pipeline returned non-finite pixels (NaN/inf)"
    if not to_uint8(image).any():
        return "the pipeline returned an all-black image (every pixel 0 in 8 bits)"
    return None


def encode(pixels: np.ndarray, fmt: str, quality: int, parameters: str, record: dict[str, Any]) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        info.add_text("parameters", parameters)
        info.add_itxt("flux_batch", json.dumps(record, ensure_ascii=False))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
        pil_format = {"jpg": "JPEG", "webp": "WEBP"}[fmt]
        image.save(buffer, format=pil_format, quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def read_parameters(path) -> str | None:
    """The infotext stored in an image written by `encode`, or None."""
    from PIL import Image

    with Image.open(path) as image:
        if "parameters" in image.info:
            return image.info["parameters"]
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        return comment[8:].decode("utf-16-be")
    return comment
