"""`flux-batch-eval RUN_DIR`: how well a run of demo prompts shows what its prompts say, and a
run of demo edits (model=demo-edit) what its instructions ask."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flux_batch.errors import EXIT_BAD_INPUT, FluxBatchError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flux-batch-eval",
        description="Score a run of demo-model prompts: colour, shape, size and position "
        "accuracy (and PSNR against a reference run); items with an input image are scored as "
        "edits (the change asked made, the rest kept); prints a table and writes "
        "RUN_DIR/eval.json.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished flux-batch run directory")
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="RUN_DIR",
        help="another run of the same items: report PSNR against its images",
    )
    parser.add_argument(
        "--inputs",
        type=Path,
        metavar="DIR",
        help="the folder the records' input image paths are relative to (default: the run's "
        "prompt file's folder, or its dataset.images, from run.json)",
    )
    parser.add_argument("-o", "--output", type=Path, help="JSON file (default: RUN_DIR/eval.json)")
    args = parser.parse_args(argv)
    from flux_batch.demo.evaluation import evaluate, table
    from flux_batch.store.atomic import write_atomic

    try:
        result = evaluate(args.run_dir, args.reference, args.inputs)
    except FluxBatchError as e:
        print(f"flux-batch-eval: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    out = args.output or args.run_dir / "eval.json"
    write_atomic(out, (json.dumps(result, indent=1) + "\n").encode())
    print(table(result))
    print(f"written {out}")


if __name__ == "__main__":
    main()
