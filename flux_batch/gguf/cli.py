"""`flux-batch-gguf`: quantize a FLUX transformer into GGUF, bake LoRAs into one, or inspect a GGUF file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flux_batch.gguf.file import WRITABLE_TYPES

PROG = "flux-batch-gguf"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except BrokenPipeError:  # `inspect ... | head`: the reader left, nothing to report
        sys.stderr.close()
        raise SystemExit(0) from None
    except (ValueError, OSError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        raise SystemExit(130) from None


def _one_line(e: Exception) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: no such file"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    q = commands.add_parser(
        "quantize",
        help="write a FLUX transformer as a GGUF file",
        description="Quantize a FLUX transformer (diffusers folder, or one "
        "safetensors file in the BFL layout) into a GGUF file.",
    )
    q.add_argument(
        "src",
        metavar="SRC",
        help="diffusers transformer (or pipeline) folder, or a "
        ".safetensors file with BFL keys (model.diffusion_model. prefix allowed)",
    )
    q.add_argument("out", metavar="OUT", help="the GGUF file to write (.gguf)")
    q.add_argument(
        "--type",
        required=True,
        type=str.upper,
        choices=WRITABLE_TYPES,
        metavar="TYPE",
        help=f"weight type: {', '.join(WRITABLE_TYPES)}",
    )
    q.add_argument(
        "--layout",
        choices=("bfl", "diffusers"),
        default="bfl",
        help="key names: bfl (what ComfyUI-GGUF, stable-diffusion.cpp and diffusers "
        "read; default) or diffusers (for models diffusers cannot convert, "
        "e.g. a hidden size other than 3072)",
    )
    q.add_argument("--name", help="general.name to record (default: the source's name)")
    q.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(run=_quantize)

    m = commands.add_parser(
        "merge-lora",
        help="bake LoRAs into a GGUF transformer",
        description="Write OUT: the GGUF transformer SRC with LoRAs baked in "
        "(each adapted weight dequantized, its low-rank update added, "
        "requantized), so it renders at the speed of no LoRA.",
    )
    m.add_argument("src", metavar="SRC", help="a FLUX transformer GGUF (any layout, any type)")
    m.add_argument("out", metavar="OUT", help="the GGUF file to write (.gguf)")
    m.add_argument(
        "--lora",
        required=True,
        action="append",
        metavar="FILE[:SCALE]",
        help="a LoRA .safetensors file and its scale (default 1); repeat for several",
    )
    m.add_argument(
        "--type",
        required=True,
        type=str.upper,
        choices=WRITABLE_TYPES,
        metavar="TYPE",
        help=f"weight type of OUT: {', '.join(WRITABLE_TYPES)}",
    )
    m.add_argument("--name", help="general.name to record (default: OUT's name)")
    m.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    m.set_defaults(run=_merge_lora)

    i = commands.add_parser(
        "inspect",
        help="describe a GGUF file",
        description="Describe a FLUX GGUF file: layout, variant, blocks, "
        "tensor types, sizes and memory when loaded.",
    )
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(run=_inspect)
    return parser


def _quantize(args) -> None:
    from flux_batch.gguf.quantize import quantize_checkpoint

    out = Path(args.out)
    if out.suffix != ".gguf":
        raise ValueError(f"{out}: the output must end in .gguf")
    if out.exists() and not args.force:
        raise ValueError(f"{out}: already exists (pass --force to overwrite)")
    name = args.name or Path(os.path.abspath(args.src)).name.removesuffix(".safetensors")
    result = quantize_checkpoint(args.src, out, args.type, args.layout, name, progress=not args.quiet)
    print(result.line())


def _merge_lora(args) -> None:
    from flux_batch.gguf.merge_lora import LoraSpec, merge_lora

    out = Path(args.out)
    if out.suffix != ".gguf":
        raise ValueError(f"{out}: the output must end in .gguf")
    if out.exists() and not args.force:
        raise ValueError(f"{out}: already exists (pass --force to overwrite)")
    loras = [LoraSpec.parse(text) for text in args.lora]
    stats = merge_lora(args.src, out, loras, args.type, args.name)
    baked = ", ".join(f"{Path(lora.path).name} x{lora.scale:g}" for lora in loras)
    print(
        f"{out}: {args.type}, {baked} baked into {Path(args.src).name}, "
        f"{sum(n for n, _ in stats.types.values())} tensors in {stats.seconds:.1f} s"
    )


def _inspect(args) -> None:
    from flux_batch.gguf.inspect import render, summarize

    info = summarize(args.file)
    print(json.dumps(info, indent=2) if args.json else render(info))


if __name__ == "__main__":
    main()
