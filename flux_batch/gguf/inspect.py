"""What a FLUX GGUF file holds: family, layout, variant, size, tensor types, memory when loaded."""

from __future__ import annotations

import os
from pathlib import Path

from flux_batch import families
from flux_batch.gguf.file import open_reader

UNQUANTIZED = ("F32", "F16")  # diffusers loads these as plain tensors in the compute dtype
# what diffusers 0.42's GGUF layers run (diffusers.quantizers.gguf.utils.SUPPORTED_GGUF_QUANT_TYPES),
# plus the plain types; written out so checking a file imports neither diffusers nor torch
LOADABLE_TYPES = {
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
}


def summarize(path: str | os.PathLike) -> dict:
    """A JSON-ready description of the GGUF file at `path` (ValueError if not GGUF)."""
    path = Path(path)
    reader = open_reader(path)
    names = [t.name for t in reader.tensors]
    family = families.for_tensors(names)
    keys = (family or families.get(families.DEFAULT)).keys
    prefixed = any(name.startswith(keys.BFL_PREFIX) for name in names)
    shapes = {
        name: tuple(int(d) for d in reversed(t.shape))
        for name, t in zip(keys.unprefixed(names), reader.tensors)
    }
    layout = keys.layout_of(shapes)
    n_double, n_single = keys.block_counts(shapes, layout) if layout else (0, 0)
    hidden = shapes.get("img_in.weight" if layout == "bfl" else "x_embedder.weight", (None,))[0]
    types: dict[str, dict[str, int]] = {}
    for t in reader.tensors:
        entry = types.setdefault(t.tensor_type.name, {"tensors": 0, "values": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["values"] += int(t.n_elements)
        entry["bytes"] += int(t.n_bytes)
    packed = sum(e["bytes"] for name, e in types.items() if name not in UNQUANTIZED)
    plain = sum(e["values"] for name, e in types.items() if name in UNQUANTIZED)
    return {
        "file": str(path),
        "file_size": path.stat().st_size,
        "architecture": _field(reader, "general.architecture"),
        "name": _field(reader, "general.name"),
        "file_type": _file_type(_field(reader, "general.file_type")),
        "quantization_version": _field(reader, "general.quantization_version"),
        "family": family.name if family else None,
        "layout": layout,
        "prefix": keys.BFL_PREFIX if prefixed else None,
        "variant": keys.variant_of(shapes) if layout else None,
        "model": family.describe(list(shapes)) if family and layout else None,  # "FLUX.2 [klein]"
        "double_blocks": n_double,
        "single_blocks": n_single,
        "hidden_size": hidden,
        "parameters": sum(e["values"] for e in types.values()),
        "tensors": len(reader.tensors),
        "types": dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"])),
        "loaded_bytes": {"bfloat16": packed + 2 * plain, "float32": packed + 4 * plain},
    }


def loading_problem(path: str | os.PathLike) -> str | None:
    """Why a local GGUF cannot be loaded as a FLUX transformer, if it can't. (Any hidden size
    loads: gguf/mmap.py splits a BFL file's fused tensors itself.)"""
    info = summarize(path)
    if info["layout"] is None:
        return "no FLUX transformer tensors in it (img_in/double_blocks or x_embedder/transformer_blocks)"
    unsupported = sorted(set(info["types"]) - LOADABLE_TYPES)
    if unsupported:
        return (
            f"it holds {', '.join(unsupported)} tensors, which diffusers' GGUF layers do not "
            f"run (they run {', '.join(sorted(LOADABLE_TYPES))})"
        )
    return None


def _field(reader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value


def _file_type(value) -> str | None:
    import gguf

    if value is None:
        return None
    try:
        return gguf.LlamaFileType(int(value)).name
    except ValueError:
        return str(value)


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def count_text(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def render(info: dict) -> str:
    """The human-readable report of `summarize`."""
    layout = {"bfl": "BFL (Black Forest Labs) key layout", "diffusers": "diffusers key layout"}
    lines = [
        f"file          {info['file']} ({size_text(info['file_size'])}, {info['file_size']:,} bytes)",
        f"architecture  {info['architecture']}, {layout.get(info['layout'], 'not a FLUX transformer')}"
        + (f", names prefixed {info['prefix']}" if info.get("prefix") else ""),
    ]
    if info["layout"]:
        model = info.get("model") or f"FLUX {info['variant']}"
        keys = families.get(info.get("family") or families.DEFAULT).keys
        if hasattr(keys, "has_guidance"):  # FLUX.1's and FLUX.2's variants are told by it
            model += " (guidance_in present)" if info["variant"] == "dev" else " (no guidance_in)"
        lines.append(
            f"model         {model}, {info['double_blocks']} double + "
            f"{info['single_blocks']} single blocks, hidden size {info['hidden_size']}"
        )
    lines.append(
        f"parameters    {count_text(info['parameters'])} ({info['parameters']:,}) in "
        f"{info['tensors']} tensors"
    )
    lines.append(f"file type     {info['file_type']}, quantization version {info['quantization_version']}")
    lines.append("")
    lines.append(f"{'type':<6} {'tensors':>7} {'parameters':>15} {'bytes':>15} {'bits/weight':>11}")
    for name, e in info["types"].items():
        bits = 8 * e["bytes"] / e["values"] if e["values"] else 0
        lines.append(f"{name:<6} {e['tensors']:>7} {e['values']:>15,} {e['bytes']:>15,} {bits:>11.2f}")
    loaded = info["loaded_bytes"]
    lines.append("")
    lines.append(
        f"loaded        {size_text(loaded['bfloat16'])} with bfloat16 compute, "
        f"{size_text(loaded['float32'])} with float32 (quantized weights stay packed; "
        "F32/F16 tensors take the compute dtype)"
    )
    return "\n".join(lines)
