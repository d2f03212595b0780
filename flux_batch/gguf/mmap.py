"""A GGUF file's tensors as views of the memory-mapped file, for diffusers' GGUF loader.

diffusers' own reader (`load_gguf_checkpoint`) copies every tensor out of the file, so
loading a transformer costs its whole size again in process memory on top of the file pages
it reads. `state_dict()` builds the same dict without the copy: quantized tensors become
diffusers' `GGUFParameter` (still dequantized at each forward by `GGUFLinear`), F32 and F16
tensors plain tensors, all of them views of a copy-on-write mapping of the file. Pages are
read when first used and shared with the page cache; moving the model to a GPU copies them
there. diffusers' loader (`from_single_file` given this dict) keeps the views as they are:
quantized tensors are placed as given, and only floating tensors whose dtype differs from
the compute dtype (F16 under float32) are converted, as they are on the stock path.

Files in the Black Forest Labs layout (most published FLUX GGUFs) are converted here to
diffusers' names with views too: diffusers' own conversion copies every part of the fused
qkv and linear1 tensors (`torch.cat([part])`), about a third of a FLUX.1 file. Parts are
row ranges of the fused tensors, and GGUF quantizes each row by itself, so a view of rows
is exactly the tensor diffusers would build.

The mapping lives as long as the model's tensors. The file must not be truncated or
rewritten in place meanwhile (reading a page that is gone kills the process with SIGBUS);
replacing it by rename, as `flux-batch-gguf quantize` and the tiny model builder do, is safe,
since the mapping keeps the old file.
"""

from __future__ import annotations

import os


def state_dict(path: str | os.PathLike) -> dict:
    """{tensor name: tensor} of a GGUF file, as diffusers' reader returns it, uncopied."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    reader = gguf.GGUFReader(path, mode="c")  # copy-on-write: writable views, file untouched
    tensors = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if kind not in plain and kind not in SUPPORTED_GGUF_QUANT_TYPES:
            raise ValueError(
                f"{tensor.name} has the quantization type {kind.name}, which "
                "diffusers' GGUF layers do not support"
            )
        weights = torch.from_numpy(tensor.data)  # shares the mapping's memory
        if kind == gguf.GGMLQuantizationType.BF16 and len(tensor.shape) == 1:
            # a bias or norm scale (stable-diffusion.cpp keeps a bf16 source's as BF16): a
            # plain bfloat16 tensor, as ComfyUI-GGUF reads it; packed, diffusers would take
            # its bytes for values
            tensors[tensor.name] = weights.view(torch.bfloat16)
        else:
            tensors[tensor.name] = weights if kind in plain else GGUFParameter(weights, quant_type=kind)
    return diffusers_layout(tensors)


def diffusers_layout(tensors: dict) -> dict:
    """A BFL-layout state dict under diffusers' names, fused tensors split into views of their
    rows; a diffusers-layout one without the `model.diffusion_model.` prefix some converters
    keep; any other dict, or one holding tensors the FLUX table does not name, as it is
    (diffusers' loader then converts it its own way)."""
    import torch

    from flux_batch import families

    keys = families.key_table(tensors)  # the family's BFL <-> diffusers table
    names = [name.removeprefix(keys.BFL_PREFIX) for name in tensors]
    layout = keys.layout_of(names)
    if layout == "diffusers":
        return dict(zip(names, tensors.values()))
    if layout != "bfl":
        return tensors
    bfl = dict(zip(names, tensors.values()))
    table = keys.table(names, "bfl")
    if {fused.bfl for fused in table} != bfl.keys() or "img_in.weight" not in bfl:
        return tensors
    hidden = bfl["img_in.weight"].shape[0]
    converted = {}
    for fused in table:
        tensor = bfl[fused.bfl]
        if fused.swap:  # the final norm's shift, scale -> scale, shift: a copy, as in diffusers
            tensor = keys.swap_halves(tensor)
        sizes = keys.split_sizes(fused, tensor.shape[0], hidden)
        converted.update(zip(fused.parts, torch.split(tensor, sizes, dim=0)))
    return converted
