"""Baking LoRAs into a GGUF transformer:
`flux-batch-gguf merge-lora SRC OUT --lora FILE[:SCALE] … --type T`.

An adapter applied at run time costs at every step (its two small matrix products per layer,
and on GGUF layers the dequantized weight besides); a baked file renders at the speed of no
LoRA. Each tensor of SRC is dequantized; an adapted weight gets `scale × (alpha / rank) × up @
down` of every LoRA that reaches it added; then it is requantized by `write_gguf`, one tensor at
a time, under the same type policy as `quantize`.

LoRA files are read as the renderer reads them: diffusers' `lora_state_dict` turns Kohya
(sd-scripts, over BFL block names), XLabs and other layouts into diffusers' PEFT names, so what
renders with `lora=[…]` bakes here. Deltas on diffusers modules are fused into a BFL-layout
file's tensors with the same table the converter uses (the family's key table, e.g.
families/flux1/keys.py). A LoRA with text-encoder weights, or with keys that reach no tensor of
SRC, is refused in one line: baking only part of it would render something else than the
run-time LoRA.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from flux_batch import families
from flux_batch.gguf.checkpoint import PlannedTensor
from flux_batch.gguf.file import WriteStats, open_reader, write_gguf

_LORA_KEY = re.compile(r"^transformer\.(.+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """`FILE` or `FILE:SCALE`."""
        path, sep, scale = text.rpartition(":")
        if not sep or not path or os.path.exists(text):
            return cls(text)
        try:
            return cls(path, float(scale))
        except ValueError:
            raise ValueError(f"--lora {text}: the scale after ':' must be a number") from None


def lora_deltas(spec: LoraSpec) -> dict[str, "object"]:
    """{diffusers module name: scale × (alpha/rank) × up @ down} of one LoRA file."""
    import torch
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin  # not the pipeline: no image processors

    if not spec.path.endswith(".safetensors") or not os.path.isfile(spec.path):
        raise ValueError(f"--lora {spec.path}: not a .safetensors file")
    try:
        state, alphas = FluxLoraLoaderMixin.lora_state_dict(spec.path, return_alphas=True)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise ValueError(
            f"--lora {spec.path}: cannot be read as a FLUX LoRA "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m is None:
            where = "text-encoder weights" if key.startswith("text_encoder") else f"the key {key!r}"
            raise ValueError(
                f"--lora {spec.path}: holds {where}, which a transformer GGUF cannot "
                "carry; apply it at run time with lora=[…]"
            )
        pairs.setdefault(m[1], {})[m[2]] = value.float()
    deltas = {}
    for module, pair in pairs.items():
        if pair.keys() != {"A", "B"}:
            raise ValueError(f"--lora {spec.path}: {module} has lora_{''.join(pair)} without its pair")
        down, up = pair["A"], pair["B"]
        alpha = (alphas or {}).get(f"transformer.{module}.alpha")
        factor = spec.scale * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
        deltas[module] = factor * (up @ down)
    return deltas


def merge_lora(
    src: str | os.PathLike, out: str | os.PathLike, loras: list[LoraSpec], qtype: str, name: str | None = None
) -> WriteStats:
    """Write OUT: SRC's transformer with the LoRAs baked in, quantized to `qtype`."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    reader = open_reader(src)
    keys = families.key_table(t.name for t in reader.tensors)
    tensors = {t.name.removeprefix(keys.BFL_PREFIX): t for t in reader.tensors}
    layout = keys.layout_of(tensors)
    if layout is None:
        raise ValueError(f"{src}: not a FLUX transformer GGUF")
    added: dict[str, torch.Tensor] = {}
    for spec in loras:
        for name_, delta in _placed(lora_deltas(spec), tensors, layout, spec).items():
            added[name_] = added[name_] + delta if name_ in added else delta

    def load(tensor_name: str):
        t = tensors[tensor_name]
        values = torch.from_numpy(np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32))
        values = values.reshape(torch_shape(t))
        return values + added[tensor_name] if tensor_name in added else values

    planned = [PlannedTensor(n, torch_shape(t), lambda n=n: load(n)) for n, t in tensors.items()]
    metadata = {"general.name": name or Path(out).stem}
    return write_gguf(out, planned, qtype, metadata)


def torch_shape(tensor) -> tuple[int, ...]:
    """A GGUF tensor's shape in torch's order (GGUF lists the fastest dimension first)."""
    return tuple(int(d) for d in reversed(tensor.shape))


def _placed(deltas: dict, tensors: dict, layout: str, spec: LoraSpec) -> dict:
    """The deltas under SRC's tensor names: diffusers modules as they are, or fused into the BFL
    tensors their rows belong to (zeros for the parts the LoRA leaves alone)."""
    import torch

    if layout == "diffusers":
        placed = {f"{module}.weight": delta for module, delta in deltas.items()}
    else:
        names = list(tensors)
        keys = families.key_table(names)
        table = keys.table(names, "bfl")
        hidden = torch_shape(tensors["img_in.weight"])[0]
        placed = {}
        for fused in table:
            parts = [p.removesuffix(".weight") for p in fused.parts if p.endswith(".weight")]
            if not fused.bfl.endswith(".weight") or not any(p in deltas for p in parts):
                continue
            shape = torch_shape(tensors[fused.bfl])
            sizes = keys.split_sizes(fused, shape[0], hidden)
            pieces = [deltas.get(p, torch.zeros(size, shape[1])) for p, size in zip(parts, sizes)]
            delta = torch.cat(pieces, dim=0)
            placed[fused.bfl] = keys.swap_halves(delta) if fused.swap else delta
        reached = {p.removesuffix(".weight") for f in table if f.bfl in placed for p in f.parts}
        deltas = {m: d for m, d in deltas.items() if m not in reached}
        if deltas:
            placed.update({f"{module}.weight": delta for module, delta in deltas.items()})
    missing = sorted(n for n in placed if n not in tensors)
    if missing:
        raise ValueError(
            f"--lora {spec.path}: {missing[0].removesuffix('.weight')} is not a layer "
            "of this transformer (is it a LoRA for another model?)"
        )
    for n, delta in placed.items():
        shape = torch_shape(tensors[n])
        if tuple(delta.shape) != shape:
            raise ValueError(
                f"--lora {spec.path}: its update of {n} is {tuple(delta.shape)}, the weight is {shape}"
            )
    return placed
