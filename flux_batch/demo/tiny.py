"""The embedded `tiny` models: a random pipeline of each family and variant, small enough to
render on any CPU (`model=tiny`, `tiny-schnell`, `tiny-flux2`, `tiny-klein`, `tiny-chroma`,
`tiny-kontext`).

Built deterministically on first use into the cache folder: a complete diffusers pipeline
folder (its family's pieces: families/<family>/tiny.py), plus one GGUF file per quant type,
written by the same GGUF code as real quantizations and loaded through the same
`from_single_file` path as real FLUX files. It proves the plumbing; it draws noise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flux_batch import families

VERSION = "tiny-v1"  # bump when the architecture or build changes: it names the cache folder


def cache_root() -> Path:
    return Path(os.environ.get("FLUX_BATCH_CACHE") or Path.home() / ".cache" / "flux-batch")


def base_dir(variant: str = "dev", family: str = families.DEFAULT) -> Path:
    """The pipeline folder of a family's variant. FLUX.1's keep their first names (dev: with a
    guidance embedding, like FLUX.1-dev; schnell: without), which run fingerprints hold."""
    if family == families.DEFAULT:
        return cache_root() / (VERSION if variant == "dev" else f"{VERSION}-{variant}")
    return cache_root() / f"{VERSION}-{family}-{variant}"


def transformer_path(gguf_type: str, variant: str = "dev", family: str = families.DEFAULT) -> Path:
    return base_dir(variant, family) / f"transformer-{gguf_type}.gguf"


def ensure_built(gguf_type: str, variant: str = "dev", family: str = families.DEFAULT) -> tuple[Path, Path]:
    """Build the pipeline folder and the GGUF file for `gguf_type` if missing; return both."""
    base = base_dir(variant, family)
    if not (base / "model_index.json").exists():
        _build_base(base, variant, family)
    gguf_file = transformer_path(gguf_type, variant, family)
    if not gguf_file.exists():
        _write_transformer_gguf(base, gguf_file, gguf_type)
    return base, gguf_file


def _build_base(base: Path, variant: str, family: str) -> None:
    # Build beside the target and rename, so a crash or a concurrent builder never leaves
    # a half-built folder in place.
    tmp = base.with_name(f".{base.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    import transformers

    # a build on first use prints nothing: a refusal right after it stays one line
    transformers.utils.logging.disable_progress_bar()
    families.get(family).save_tiny_pipeline(tmp, variant)
    try:
        os.rename(tmp, base)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _write_transformer_gguf(base: Path, out: Path, gguf_type: str) -> None:
    from safetensors.numpy import load_file

    from flux_batch.gguf.file import write_gguf

    weights = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    write_gguf(out, weights, gguf_type, metadata={"general.name": f"flux-batch {VERSION}"})
