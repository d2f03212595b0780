"""GGUF files: writing a quantized FLUX transformer, and checking a file before loading it.

One module owns GGUF writing: the tiny model builder and the quantizer both come here.
The tensor-type policy follows the community FLUX files: 2-D weights of the transformer
blocks are quantized; 1-D tensors and the input/output layers stay in F32/F16 (a 1-D tensor
is never stored as BF16, which diffusers would misread).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

GGUF_MAGIC = b"GGUF"
# Types the `gguf` package can write from Python (K-quants it can only read).
WRITABLE_TYPES = ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "BF16", "F16", "F32")
# Input/output layers kept in high precision, in diffusers and BFL key names.
KEEP_PREFIXES = (
    "x_embedder", "context_embedder", "time_text_embed", "norm_out", "proj_out",
    "img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer",
)


def check_gguf_file(path: str | os.PathLike) -> None:
    """Raise ValueError with a one-line reason if `path` is not a readable GGUF file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    import gguf

    try:  # the reader maps the file; a cut-off download fails here, not deep inside diffusers
        tensors = gguf.GGUFReader(path).tensors
        end = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=0)
    except Exception as e:  # whatever a damaged header makes the reader raise
        raise ValueError(f"{path}: truncated or damaged GGUF file ({type(e).__name__}: {e})") from None
    if end > path.stat().st_size:
        raise ValueError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes; its tensors end at {end})")


def tensor_type(name: str, shape: tuple[int, ...], qtype: str) -> str:
    """The GGML type a tensor is stored as when the file's type is `qtype`."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) != 2:
        return "F32"
    if name.startswith(KEEP_PREFIXES) or qtype in ("F32", "F16"):
        return "F16" if qtype != "F32" else "F32"
    block = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]
    return qtype if shape[-1] % block == 0 else "F16"


def quantize(array: np.ndarray, ggml_type: str) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(array.astype(np.float32, copy=False), gguf.GGMLQuantizationType[ggml_type])


def write_gguf(
    path: str | os.PathLike,
    tensors: Mapping[str, "np.ndarray"],
    qtype: str,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` (name -> float array) as a GGUF file, atomically (temp file + rename)."""
    import gguf

    if qtype not in WRITABLE_TYPES:
        raise ValueError(
            f"the gguf package cannot write {qtype} from Python; writable types: {', '.join(WRITABLE_TYPES)}"
        )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    file_type = "ALL_F32" if qtype == "F32" else f"MOSTLY_{qtype}"
    writer.add_file_type(int(gguf.LlamaFileType[file_type]))
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    for name, array in tensors.items():
        ggml_type = tensor_type(name, tuple(array.shape), qtype)
        data = quantize(np.asarray(array), ggml_type)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[ggml_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """name -> GGML type name of every tensor in a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}
