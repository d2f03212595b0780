"""Peak memory of `flux-batch-gguf quantize` on the full-width random FLUX transformer.

    python bench/gguf_memory.py           # writes the "GGUF quantization memory" section

Runs the installed script in a subprocess per type and samples its anonymous resident memory
(RssAnon in /proc/PID/status: the process's own allocations, not the page cache of the
memory-mapped source file) every 20 ms. Compared with the largest tensor of the source
(bf16) and the output file: streaming keeps the peak near one tensor, not the model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import flux_wide  # noqa: E402
from bench.results import machine, write_section  # noqa: E402
from flux_batch.gguf.checkpoint import open_checkpoint, plan  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "BF16"]


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_of(command: list[str]) -> tuple[int, float]:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, rss_anon(process.pid))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return peak, time.perf_counter() - start


def main() -> None:
    load = machine()
    script = str(Path(sys.executable).parent / "flux-batch-gguf")
    with tempfile.TemporaryDirectory(prefix="gguf-memory-") as work:
        source = flux_wide.build_transformer(Path(work) / "transformer")
        model_bytes = sum(f.stat().st_size for f in source.glob("*.safetensors"))
        largest = max(
            2 * t.shape[0] * (t.shape[1] if len(t.shape) > 1 else 1)
            for t in plan(open_checkpoint(source), "bfl")
        )
        baseline, _ = peak_of([sys.executable, "-c", "import torch, safetensors, gguf, diffusers"])
        rows = [
            "| type | peak RssAnon MiB | of which imports MiB | output MiB | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind in TYPES:
            out = Path(work) / f"{kind}.gguf"
            peak, seconds = peak_of([script, "quantize", str(source), str(out), "--type", kind, "--quiet"])
            rows.append(
                f"| {kind} | {peak / 2**20:.0f} | {baseline / 2**20:.0f} | "
                f"{out.stat().st_size / 2**20:.0f} | {seconds:.1f} |"
            )
            print(rows[-1], flush=True)
            out.unlink()
    body = (
        f"Source: the full-width random FLUX transformer, {model_bytes / 2**20:.0f} MiB of bf16 "
        f"safetensors; its largest tensor (fused single-block linear1) is "
        f"{largest / 2**20:.0f} MiB in bf16.\n\n" + "\n".join(rows)
    )
    write_section("gguf_memory", "GGUF quantization memory", body, ("torch", "safetensors", "gguf"), load)


if __name__ == "__main__":
    main()
