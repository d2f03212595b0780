"""LoRA files: resolved, identified by SHA-256, and loaded as PEFT adapters on top of the
GGUF-quantized transformer (diffusers cannot fuse into GGUF weights, so they stay adapters).

`lora=[{path: style.safetensors, scale: 0.8}, …]`: a list, so `lora.0.scale=0,0.5,1` sweeps
one entry's scale. Only .safetensors files are read; diffusers' Flux loader converts the
Kohya (sd-scripts), XLabs and BFL layouts to its own. A file none of whose keys reach a layer
is refused, naming it, rather than rendering the base model unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flux_batch import families
from flux_batch.errors import ModelFileError
from flux_batch.model.file_hash import file_sha256
from flux_batch.model.hub import fetch_hub_file, is_hub_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraFile:
    key: str  # config key, e.g. lora.0
    name: str  # the file's stem: its name in infotext and the manifest
    path: str  # local file
    sha256: str
    scale: float

    @property
    def adapter(self) -> str:
        return self.key.replace(".", "")  # lora.0 -> lora0: PEFT adapter names carry no dots

    def record(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "scale": self.scale}


def _check_suffix(key: str, path: str) -> None:
    if not path.endswith(".safetensors"):
        raise ModelFileError(
            f"{key}.path={path}: only .safetensors LoRA files are read (pickled .ckpt/.pt/.bin "
            "files are never loaded)"
        )


def identity(entries) -> list[dict]:
    """What identifies the LoRAs for the run fingerprint: a local file by its SHA-256, a hub
    file by its name (it is not fetched to compute a fingerprint), with its scale."""
    found = []
    for entry in entries:
        path = os.path.expanduser(str(entry.path))
        if os.path.isfile(path):
            found.append({"sha256": file_sha256(path), "scale": float(entry.scale)})
        else:
            found.append({"source": path, "scale": float(entry.scale)})
    return found


def check(entries) -> None:
    """Refuse, before any model loads, a LoRA (an entry of the config's `lora` list) that is not
    a .safetensors file or is missing."""
    for i, entry in enumerate(entries):
        key, spec = f"lora.{i}", os.path.expanduser(str(entry.path))
        _check_suffix(key, spec)
        if not os.path.isfile(spec) and not is_hub_file(spec, ".safetensors"):
            raise ModelFileError(f"{key}.path={spec}: LoRA file not found")


def resolve(entries) -> tuple[LoraFile, ...]:
    """Every configured LoRA as a local file with its hash, fetching hub files as needed."""
    return tuple(_resolve_one(f"lora.{i}", entry) for i, entry in enumerate(entries))


def _resolve_one(key: str, entry) -> LoraFile:
    spec = os.path.expanduser(str(entry.path))
    _check_suffix(key, spec)
    local = spec if os.path.isfile(spec) else fetch_hub_file(f"{key}.path", spec, ".safetensors")
    if local is None:
        raise ModelFileError(f"{key}.path={spec}: LoRA file not found")
    return LoraFile(key, Path(spec).stem, local, file_sha256(local), float(entry.scale))


def apply(pipe, loras: tuple[LoraFile, ...]) -> None:
    """Load each LoRA as its own adapter and activate them all with their scales."""
    if not loras:
        return
    for lora in loras:
        _load(pipe, lora)
    pipe.set_adapters([lora.adapter for lora in loras], adapter_weights=[lora.scale for lora in loras])


def _load(pipe, lora: LoraFile) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"{lora.key}.path={lora.path}"
    try:
        state_dict = load_file(lora.path)
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{where}: not a readable safetensors file ({e})") from None
    try:
        pipe.load_lora_weights(state_dict, adapter_name=lora.adapter)
    except (ValueError, KeyError, RuntimeError, AssertionError, IndexError) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ModelFileError(
            f"{where}: cannot be loaded onto this model's transformer ({type(e).__name__}: "
            f"{first_line[:300]})"
        ) from None
    if _adapted_layers(pipe, lora.adapter) == 0:
        raise ModelFileError(
            f"{where}: none of its keys match a layer of this model (is it a LoRA for another model family?)"
        )
    log.info("LoRA %s (%s) at scale %g", lora.name, lora.sha256[:12], lora.scale)


def _adapted_layers(pipe, adapter: str) -> int:
    """How many layers of the pipeline's models carry `adapter`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    count = 0
    for component in (pipe.transformer, *families.of_pipeline(pipe).text_encoders(pipe)):
        for module in component.modules():
            if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {}):
                count += 1
    return count
