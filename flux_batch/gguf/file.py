"""GGUF files: writing a quantized FLUX transformer, and checking a file before loading it.

One module owns GGUF writing: the tiny model builder and `flux-batch-gguf quantize` both come
here. The tensor-type policy follows the community FLUX files: 2-D weights of the transformer
blocks are quantized; 1-D tensors and small tensors stay in F32, the input/output layers in F16
(in BF16 in a BF16 file, which so keeps a bf16 source exactly, as city96's BF16 files do).
Files from other converters may hold 1-D BF16 tensors; the loader reads those (gguf/mmap.py).

Writing streams: the header and tensor table are written from shapes alone, then each tensor
is read, quantized and appended, so memory holds one tensor at a time.
"""

from __future__ import annotations

import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

if TYPE_CHECKING:  # numpy and gguf are imported where used: checking a run's settings needs neither
    import numpy as np


GGUF_MAGIC = b"GGUF"
# Types the `gguf` package can write from Python (K-quants it can only read).
WRITABLE_TYPES = ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "BF16", "F16", "F32")
# Input/output layers kept in high precision, in diffusers and BFL key names.
KEEP_PREFIXES = (
    "x_embedder",
    "context_embedder",
    "time_text_embed",
    "time_guidance_embed",  # FLUX.2's (BFL: time_in, guidance_in)
    "norm_out",
    "proj_out",
    "img_in",
    "txt_in",
    "time_in",
    "vector_in",
    "guidance_in",
    "final_layer",
)
SMALL = 1024  # tensors with fewer values than this are not worth quantizing


def check_gguf_file(path: str | os.PathLike) -> None:
    """Raise ValueError with a one-line reason if `path` is not a complete GGUF file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    size = path.stat().st_size
    try:
        needed = _expected_size(path)
    except _HeaderEnds:
        raise ValueError(f"{path}: truncated GGUF file ({size:,} bytes end inside its header)") from None
    except (ValueError, OverflowError, struct.error) as e:
        raise ValueError(f"{path}: damaged GGUF header ({e})") from None
    if needed > size:
        raise ValueError(f"{path}: truncated GGUF file ({size:,} bytes; its tensors need {needed:,})")


class _HeaderEnds(Exception):
    pass


# sizes of the fixed-size GGUF metadata value types, by type id (8: string, 9: array)
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _expected_size(path: Path) -> int:
    """Bytes a GGUF file must have: the end of its last tensor, from the header alone."""
    import gguf

    with open(path, "rb") as f:

        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) < n:
                raise _HeaderEnds
            return data

        def number(fmt: str) -> int:
            return struct.unpack("<" + fmt, read(struct.calcsize(fmt)))[0]

        def skip_value(kind: int) -> None:
            if kind == 8:
                read(number("Q"))
            elif kind == 9:
                item, count = number("I"), number("Q")
                for _ in range(count):
                    skip_value(item)
            else:
                read(_VALUE_SIZES[kind])

        read(4)
        version, n_tensors, n_kv = number("I"), number("Q"), number("Q")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        alignment = 32
        for _ in range(n_kv):
            key = read(number("Q")).decode("utf-8", "replace")
            kind = number("I")
            if key == "general.alignment" and kind == 4:
                alignment = number("I")
            else:
                skip_value(kind)
        end = 0
        for _ in range(n_tensors):
            read(number("Q"))
            dims = [number("Q") for _ in range(number("I"))]
            ggml_type, offset = number("I"), number("Q")
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
            end = max(end, offset + math.prod(dims) // block * type_size)
        start = f.tell()
    return (start + alignment - 1) // alignment * alignment + end


def open_reader(path: str | os.PathLike):
    """gguf.GGUFReader of a checked file, with any parse failure as a one-line ValueError."""
    import gguf

    check_gguf_file(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader fails in many ways on damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: damaged GGUF file ({reason})") from None


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """The GGML type a tensor is stored as when the file's type is `qtype`."""
    from flux_batch.gguf.quants import BLOCK

    if len(shape) != 2 or math.prod(shape) < SMALL:
        return "F32"
    if name.startswith(KEEP_PREFIXES) or qtype in ("F32", "F16", "BF16"):
        return qtype if qtype in ("F32", "BF16") else "F16"
    return qtype if shape[-1] % BLOCK[qtype][0] == 0 else "F16"


def stored_bytes(shape: tuple[int, ...], ggml_type: str) -> int:
    from flux_batch.gguf.quants import BLOCK

    block, type_size = BLOCK[ggml_type]
    return math.prod(shape) // block * type_size


@dataclass
class WriteStats:
    """What a write did: per-type counts and bytes, input bytes as float32, seconds."""

    types: dict[str, list[int]] = field(default_factory=dict)  # type -> [tensors, bytes]
    values: int = 0
    seconds: float = 0.0
    quantize_seconds: float = 0.0

    def add(self, ggml_type: str, n_values: int, n_bytes: int) -> None:
        entry = self.types.setdefault(ggml_type, [0, 0])
        entry[0] += 1
        entry[1] += n_bytes
        self.values += n_values


def write_gguf(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable,
    qtype: str,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> WriteStats:
    """Write a FLUX transformer as GGUF, atomically (temp file + rename).

    `tensors` is a name -> float array mapping, or PlannedTensor-like objects (name, shape,
    load()) read one at a time. `progress(name, done_values, total_values)` is called after
    each tensor.
    """
    import gguf

    from flux_batch.gguf.quants import quantize

    if qtype not in WRITABLE_TYPES:
        raise ValueError(
            f"the gguf package cannot write {qtype} from Python; writable types: {', '.join(WRITABLE_TYPES)}"
        )
    planned = _as_planned(tensors)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(int(gguf.LlamaFileType["ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"]))
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    types = [tensor_type(t.name, tuple(t.shape), qtype) for t in planned]
    for t, ggml_type in zip(planned, types):
        _add_info(writer, t.name, tuple(t.shape), ggml_type)
    stats, start = WriteStats(), time.perf_counter()
    total = sum(math.prod(t.shape) for t in planned)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, ggml_type in zip(planned, types):
            tensor = t.load()
            if tuple(tensor.shape) != tuple(t.shape):
                raise ValueError(f"{t.name}: shape {tuple(tensor.shape)}, expected {tuple(t.shape)}")
            began = time.perf_counter()
            data = quantize(tensor, ggml_type)
            stats.quantize_seconds += time.perf_counter() - began
            del tensor
            writer.write_tensor_data(data)
            stats.add(ggml_type, math.prod(t.shape), data.nbytes)
            del data
            if progress:
                progress(t.name, stats.values, total)
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    stats.seconds = time.perf_counter() - start
    return stats


def _as_planned(tensors) -> list:
    import numpy as np

    if isinstance(tensors, Mapping):
        from flux_batch.gguf.checkpoint import PlannedTensor

        return [
            PlannedTensor(name, tuple(np.shape(a)), lambda a=a: _as_torch(a)) for name, a in tensors.items()
        ]
    return list(tensors)


def _as_torch(array):
    import numpy as np
    import torch

    return torch.as_tensor(np.asarray(array)) if isinstance(array, np.ndarray) else array


def _add_info(writer, name: str, shape: tuple[int, ...], ggml_type: str) -> None:
    import gguf
    import numpy as np

    raw = gguf.GGMLQuantizationType[ggml_type]
    n_bytes = stored_bytes(shape, ggml_type)
    if ggml_type in ("F32", "F16"):
        writer.add_tensor_info(name, shape, np.dtype(ggml_type.replace("F", "float")), n_bytes, raw)
    else:
        byte_shape = gguf.quant_shape_to_byte_shape(shape, raw)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw)


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """name -> GGML type name of every tensor in a GGUF file."""
    reader = open_reader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}
