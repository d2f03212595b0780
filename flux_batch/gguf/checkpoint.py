"""Reading a FLUX transformer checkpoint tensor by tensor, in either key layout.

Sources: a diffusers transformer folder (config.json + safetensors, sharded or not; a
pipeline folder's `transformer/` is found too), or one safetensors file in the BFL layout,
with or without the `model.diffusion_model.` prefix (a full checkpoint's VAE and text
encoder tensors are then ignored). Nothing is read until a tensor is asked for, so converting
holds one tensor (or the parts of one fused tensor) in memory at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flux_batch import families


class CheckpointError(ValueError):
    """A source that is not a readable FLUX transformer; the message names the file."""


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    load: Callable[[], "object"]  # -> torch.Tensor, read when called


class Checkpoint:
    """Lazy tensors of safetensors files: name -> (file, name in the file)."""

    def __init__(self, where: dict[str, tuple[Path, str]], source: Path):
        self.where = where
        self.source = source
        self._handles: dict[Path, object] = {}
        self.names = list(where)
        self.keys = families.key_table(self.names)  # the family's BFL <-> diffusers table
        self.layout = self.keys.layout_of(self.names)
        if self.layout is None:
            raise CheckpointError(
                f"{source}: no FLUX transformer tensors found (expected "
                "img_in/double_blocks or x_embedder/transformer_blocks names)"
            )

    def _handle(self, path: Path):
        from safetensors import safe_open

        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        path, key = self.where[name]
        return tuple(self._handle(path).get_slice(key).get_shape())

    def get(self, name: str):
        path, key = self.where[name]
        return self._handle(path).get_tensor(key)

    @property
    def hidden_size(self) -> int:
        return self.shape("img_in.weight" if self.layout == "bfl" else "x_embedder.weight")[0]


def open_checkpoint(source: str | os.PathLike) -> Checkpoint:
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    if source.is_dir():
        return Checkpoint(_folder_tensors(source), source)
    if source.suffix != ".safetensors":
        raise CheckpointError(
            f"{source}: only .safetensors files and diffusers folders are read "
            "(pickled .ckpt/.pt/.bin files are never loaded)"
        )
    return Checkpoint(_file_tensors(source), source)


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # a truncated or foreign file: safetensors says why
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _file_tensors(path: Path) -> dict[str, tuple[Path, str]]:
    keys = _safetensors_keys(path)
    prefix = families.key_table(keys).BFL_PREFIX
    prefixed = [k for k in keys if k.startswith(prefix)]
    if prefixed:  # a full checkpoint: keep the transformer only
        return {k[len(prefix) :]: (path, k) for k in prefixed}
    return {k: (path, k) for k in keys}


def _folder_tensors(folder: Path) -> dict[str, tuple[Path, str]]:
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        try:
            weight_map = json.loads(index[0].read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index[0]}: not a safetensors index ({e})") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise CheckpointError(f"{index[0]}: shard {missing[0]} is missing")
        return {k: (folder / f, k) for k, f in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors files in this folder")
    return {k: (f, k) for f in files for k in _safetensors_keys(f)}


def plan(ckpt: Checkpoint, layout: str) -> list[PlannedTensor]:
    """The tensors of `ckpt` named in `layout` ('bfl' or 'diffusers'), each read on demand."""
    keys = ckpt.keys
    n_double, n_single = keys.block_counts(ckpt.names, ckpt.layout)
    table = keys.table(ckpt.names, ckpt.layout)
    source_names = [f.bfl for f in table] if ckpt.layout == "bfl" else [p for f in table for p in f.parts]
    unknown = sorted(set(ckpt.names) - set(source_names))
    if unknown:
        raise CheckpointError(
            f"{ckpt.source}: unexpected tensor {unknown[0]!r} for a FLUX "
            f"transformer with {n_double} double and {n_single} single blocks"
        )
    missing = [n for n in source_names if n not in ckpt.where]
    if missing:
        raise CheckpointError(f"{ckpt.source}: tensor {missing[0]!r} is missing")
    if layout == ckpt.layout:
        return [PlannedTensor(n, ckpt.shape(n), lambda n=n: ckpt.get(n)) for n in source_names]
    if layout == "bfl":
        return [_fuse(ckpt, f) for f in table]
    return [t for f in table for t in _split(ckpt, f)]


def _fuse(ckpt: Checkpoint, fused) -> PlannedTensor:
    shapes = [ckpt.shape(p) for p in fused.parts]
    shape = (sum(s[0] for s in shapes), *shapes[0][1:])

    def load():
        import torch

        tensor = torch.cat([ckpt.get(p) for p in fused.parts], dim=0)
        return ckpt.keys.swap_halves(tensor) if fused.swap else tensor

    return PlannedTensor(fused.bfl, shape, load)


def _split(ckpt: Checkpoint, fused) -> list[PlannedTensor]:
    shape = ckpt.shape(fused.bfl)
    sizes = ckpt.keys.split_sizes(fused, shape[0], ckpt.hidden_size)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]

    def load(i: int):
        tensor = ckpt.get(fused.bfl)
        if fused.swap:
            tensor = ckpt.keys.swap_halves(tensor)
        return tensor[offsets[i] : offsets[i] + sizes[i]].clone()

    return [
        PlannedTensor(part, (size, *shape[1:]), lambda i=i: load(i))
        for i, (part, size) in enumerate(zip(fused.parts, sizes))
    ]
