"""Model files: the pipeline folder, the GGUF transformer and the LoRAs of a run, found (built,
for the embedded models; fetched, for hub specs) and checked before anything loads.

Only GGUF and safetensors weights are read: nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from flux_batch import demo, families
from flux_batch.demo import tiny
from flux_batch.errors import ConfigError, ModelFileError
from flux_batch.families.tensor_names import unprefixed
from flux_batch.gguf.file import WRITABLE_TYPES, check_gguf_file
from flux_batch.gguf.inspect import loading_problem
from flux_batch.model import lora
from flux_batch.model.file_hash import file_sha256
from flux_batch.model.hub import HUB_ID, fetch_hub_file, fetch_pipeline_folder


@dataclass(frozen=True)
class ModelFiles:
    base: str  # local folder or hub id
    transformer: str  # local GGUF path or URL
    loras: tuple = ()  # lora.LoraFile, in config order
    transformer_sha256: str | None = None  # of a local file (a URL is hashed by nobody)

    def record(self) -> dict:
        """What run.json keeps of the files: names and SHA-256s."""
        return {
            "transformer": {"name": os.path.basename(self.transformer), "sha256": self.transformer_sha256},
            "lora": [lora.record() for lora in self.loras],
        }


def check_same_model(previous: dict | None, files: ModelFiles) -> None:
    """Refuse to resume a run whose transformer file changed content under the same name (its
    size too may be the same, so the fingerprint cannot tell). Runs that recorded no hash
    resume as before."""
    then = ((previous or {}).get("files") or {}).get("transformer") or {}
    now = files.transformer_sha256
    if then.get("sha256") and now and then["sha256"] != now:
        raise ModelFileError(
            f"model.transformer={files.transformer}: its content changed since this run began "
            f"(sha256 {then['sha256'][:12]}… then, {now[:12]}… now), so its images would mix two "
            "models; restore the file, or start a new run (another output.dir)"
        )


def model_identity(m: DictConfig) -> dict:
    """What identifies the model's weights for the run fingerprint, without reading them.

    The embedded model's own files by its builder version; other local files by name and
    size; hub ids and URLs by name.
    """
    transformer = os.path.expanduser(str(m.transformer))
    if m.builder == "tiny":
        folder = tiny.base_dir(m.variant, family_of(m).name)
        if Path(transformer).parent == folder:
            return {
                "builder": folder.name if m.family != families.DEFAULT else tiny.VERSION,
                "transformer": os.path.basename(transformer),
            }
    if m.builder == "demo":
        if demo.is_demo_file(transformer) and Path(str(m.base)) == demo.model_dir():
            return {"builder": demo.version_of(transformer), "transformer": os.path.basename(transformer)}
    identity: dict = {"name": os.path.basename(transformer)}
    if os.path.isfile(transformer):
        identity["size"] = os.path.getsize(transformer)
    return {"base": os.path.basename(str(m.base).rstrip("/")), "transformer": identity}


def resolve_files(m: DictConfig, quant: DictConfig, loras) -> ModelFiles:
    """Local paths of the pipeline folder, the GGUF file and the LoRAs (`model`, `quant` and
    `lora` of the config), building or downloading as needed."""
    if m.builder == "tiny":
        _check_writable(quant, "tiny")
        # an overridden path is used as given
        tiny.ensure_built(quant.gguf_type, m.variant, family_of(m).name)
    elif m.builder == "demo":
        _ensure_demo(m, quant)
    base = _resolve_base(m)  # the base first: a missing model names its folder first
    family_of(m).check_folder(base, m)
    transformer = _resolve_transformer(m, base)
    local = not transformer.startswith(("http://", "https://"))
    return ModelFiles(base, transformer, lora.resolve(loras), file_sha256(transformer) if local else None)


def _ensure_demo(m: DictConfig, quant: DictConfig) -> None:
    """The shipped Q8_0 file, or another type quantized into the cache from the shipped weights."""
    if not demo.is_demo_file(os.path.expanduser(str(m.transformer))):
        return  # an overridden path is used as given
    _check_writable(quant, "demo")
    demo.ensure_built(quant.gguf_type, demo.variant_of(os.path.expanduser(str(m.transformer))))


def _check_writable(quant: DictConfig, model: str) -> None:
    """The embedded models are quantized here, by the gguf package, which writes few types."""
    if quant.gguf_type not in WRITABLE_TYPES:
        raise ConfigError(
            f"quant={quant.name}: the {model} model is quantized here with the gguf package, "
            f"which cannot write {quant.gguf_type}; use quant=q8_0, q4_0, bf16 or f32"
        )


def _missing(what: str, path: str, how: str) -> ModelFileError:
    hint = f" {how}" if how else ""
    return ModelFileError(f"{what} not found: {path}.{hint}")


def _resolve_base(m: DictConfig) -> str:
    base = os.path.expanduser(str(m.base))
    if os.path.isdir(base):
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            raise ModelFileError(f"model.base={base}: not a diffusers pipeline folder (no model_index.json)")
        return base
    if not HUB_ID.match(base):
        raise _missing("model.base folder", base, m.how_to_get)
    return fetch_pipeline_folder("model.base", base, family_of(m).pipeline_files, m.how_to_get)


def _resolve_transformer(m: DictConfig, base: str) -> str:
    spec = os.path.expanduser(str(m.transformer))
    if spec.startswith(("http://", "https://")) or os.path.exists(spec):
        local = spec
    else:
        local = fetch_hub_file("model.transformer", spec, ".gguf", m.how_to_get)
        if local is None:
            raise _missing("model.transformer file", spec, m.how_to_get)
    if not spec.startswith(("http://", "https://")):
        check_weights_file(local, "model.transformer")
        _check_gguf_against_config(m, local, base)
    return local


def _check_gguf_against_config(m: DictConfig, path: str, base: str) -> None:
    """A GGUF of another family, variant or size than the config's is refused before anything
    loads: its family by its tensor names, its variant by the family (a FLUX.1 dev file has a
    guidance embedding, schnell's none), its size against the pipeline folder's transformer
    config. The file's header is read once for all three."""
    from gguf import GGUFReader

    family = family_of(m)
    tensors = GGUFReader(path).tensors
    shapes = {
        name: tuple(int(d) for d in reversed(t.shape))
        for name, t in zip(unprefixed(t.name for t in tensors), tensors)
    }
    names = list(shapes)
    found = families.for_tensors(names)
    if found is not None and found.keys is not family.keys:
        raise ModelFileError(
            f"model.transformer={path}: this is a {found.describe(names)} transformer; "
            f"model={m.name} expects {family.label}"
        )
    family.check_file(path, names, m)
    if found is not None:
        _check_size(path, base, found, shapes)


def _check_size(path: str, base: str, found: families.Family, shapes: dict) -> None:
    """The GGUF's blocks and width against the pipeline folder's transformer config, which
    loading passes to diffusers (so a FLUX.2 [klein] file is never taken for [dev], as
    diffusers' own detection does): a file of another size is refused in one line."""
    import json

    config_file = Path(base) / "transformer" / "config.json"
    if not config_file.is_file():
        return
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise ModelFileError(f"{config_file}: not a JSON transformer config ({e})") from None
    layout = found.keys.layout_of(shapes)
    double, single = found.keys.block_counts(shapes, layout)
    width = shapes.get("img_in.weight" if layout == "bfl" else "x_embedder.weight", (None,))[0]
    wanted = (
        config.get("num_layers"),
        config.get("num_single_layers"),
        (config.get("num_attention_heads") or 0) * (config.get("attention_head_dim") or 0) or None,
    )
    if None in wanted or (double, single, width) == wanted:
        return
    raise ModelFileError(
        f"model.transformer={path}: a transformer of {double} double and {single} single blocks, "
        f"width {width}, but model.base={base} configures {wanted[0]} double and {wanted[1]} "
        f"single blocks, width {wanted[2]}; use the pipeline folder of this model's size"
    )


def family_of(m) -> families.Family:
    """The family of a model config (one made without model.family is FLUX.1's)."""
    return families.get(getattr(m, "family", families.DEFAULT))


def check_weights_file(path: str, key: str) -> None:
    if not path.endswith(".gguf"):
        raise ModelFileError(
            f"{key}={path}: only GGUF transformer files are read (pickled .ckpt/.pt/.bin files "
            "are never loaded)"
        )
    try:
        check_gguf_file(path)
    except ValueError as e:
        raise ModelFileError(f"{key}={e}") from None
    except OSError as e:
        raise ModelFileError(f"{key}={path}: cannot read it ({e.strerror or e})") from None
    problem = loading_problem(path)
    if problem:
        raise ModelFileError(f"{key}={path}: {problem}")
