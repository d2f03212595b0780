"""Peak memory while loading a GGUF transformer: diffusers' reader against the mapped file.

    python bench/gguf_load_memory.py [--type Q8_0]   # writes the "GGUF loading memory" section
    python bench/gguf_load_memory.py --family chroma # another family's full-width transformer

Builds the full-width random FLUX transformer (tests/flux_wide.py: hidden 3072, one double and
one single block), quantizes it with flux-batch's own quantizer (BFL layout, as published
FLUX GGUF files are), then loads it in a fresh process per reader through
`flux_batch.model.load.load_transformer` (the path every run takes): `copy` is diffusers' own
reader (`from_single_file(path)`, every tensor copied out of the file), `mapped` is
flux-batch's (`from_single_file(state dict of views of the mapping)`). Each process reports
its peak resident memory (VmHWM) and its anonymous memory (RssAnon: its own allocations, not
the file's pages), sampled every 10 ms by this script, after loading and after one forward
pass, whose output must be identical.

With `--family` (flux2, flux2-klein, chroma, kontext) the transformer is that family's tiny
config at full width (hidden 3072, one double and one single block), made by its transformer
class, and the two readers' loaded tensors are compared instead of a forward pass. Chroma's
file is in the diffusers layout: diffusers' own reader converts a BFL Chroma file only at
Chroma's real width (its converter assumes 3072 with the real block counts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench.results import machine, write_section  # noqa: E402

READERS = {"copy": False, "mapped": True}  # name -> load_transformer(lean=...)


def status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            found[key] = int(value.split()[0]) * 1024
    return found


def child(reader: str, gguf: str, base: str, out: str, family: str = "flux1") -> None:
    """Runs in the measured process: import, load, forward; print figures as JSON."""
    import numpy as np
    import torch

    import flux_wide
    from flux_batch import families
    from flux_batch.model.load import load_transformer

    figures = {"imported": status()}
    started = time.perf_counter()
    model = load_transformer(gguf, base, torch.float32, lean=READERS[reader], family=families.get(family))
    figures["load_seconds"] = time.perf_counter() - started
    figures["loaded"] = status()
    print("loaded", flush=True)  # the parent's mark between the load and the forward
    if family == "flux1":
        np.save(out, flux_wide.forward(model).numpy())
    else:  # every loaded tensor, by name: the two readers must agree on each
        params = sorted(model.state_dict().items())
        np.save(
            out,
            np.array(
                [
                    float(t.detach().as_subclass(torch.Tensor).reshape(-1).to(torch.float64).sum())
                    for _, t in params
                ]
            ),
        )
    figures["forward"] = status()
    print(json.dumps(figures), flush=True)


def measure(reader: str, gguf: Path, base: Path, out: Path, family: str = "flux1") -> dict:
    """Run one reader in a fresh process, sampling its RssAnon during the load."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", reader, str(gguf), str(base), str(out), family],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = {"load": 0}
    phase = "load"

    def sample():
        while process.poll() is None:
            try:
                peak[phase] = max(peak.get(phase, 0), status(process.pid)["RssAnon"])
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in process.stdout:
        if line.strip() == "loaded":
            phase = "forward"
        lines.append(line)
    process.wait()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"the {reader} reader exited {process.returncode}")
    figures = json.loads(lines[-1])
    figures["peak_anon"] = peak
    return figures


def f16_bytes(gguf: Path) -> int:
    from gguf import GGMLQuantizationType, GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors if t.tensor_type == GGMLQuantizationType.F16)


def build(work: Path, kind: str) -> tuple[Path, Path]:
    import flux_wide
    from flux_batch.gguf.quantize import quantize_checkpoint

    source = flux_wide.build_transformer(work / "transformer")
    gguf = work / f"wide-{kind}.gguf"
    quantize_checkpoint(source, gguf, kind, layout="bfl")
    for weights in source.glob("*.safetensors"):
        weights.unlink()  # only transformer/config.json stays: the base folder's config
    return gguf, work


VARIANTS = {"flux2": "dev", "flux2-klein": "distilled", "chroma": "chroma", "kontext": "dev"}


def build_family(work: Path, kind: str, family: str) -> tuple[Path, Path]:
    """A family's tiny transformer config at full width (hidden 3072), 1 double + 1 single
    block, quantized; only its config stays as the base folder's."""
    import json

    import torch

    from bench.mid_model import rope_axes
    from flux_batch import families
    from flux_batch.demo import tiny
    from flux_batch.gguf.quantize import quantize_checkpoint

    tiny_base, _ = tiny.ensure_built("Q8_0", VARIANTS[family], family)
    config = json.loads((tiny_base / "transformer" / "config.json").read_text())
    config.update(num_layers=1, num_single_layers=1, num_attention_heads=24, attention_head_dim=128)
    config["axes_dims_rope"] = rope_axes(config["axes_dims_rope"], 128)
    torch.manual_seed(0)
    source = work / "transformer"
    families.get(family).transformer_class().from_config(config).save_pretrained(source)
    gguf = work / f"wide-{family}-{kind}.gguf"
    quantize_checkpoint(source, gguf, kind, layout="diffusers" if family == "chroma" else "bfl")
    for weights in source.glob("*.safetensors"):
        weights.unlink()
    return gguf, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="Q8_0")
    parser.add_argument("--family", default="flux1")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return child(*options.child)
    import numpy as np

    load = machine()
    mib = lambda n: f"{n / 2**20:.0f}"  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gguf-load-") as work:
        family = options.family
        if family == "flux1":
            gguf, base = build(Path(work), options.type)
        else:
            gguf, base = build_family(Path(work), options.type, family)
        size = gguf.stat().st_size
        f16 = f16_bytes(gguf)
        results = {name: measure(name, gguf, base, Path(work) / f"{name}.npy", family) for name in READERS}
        same = np.array_equal(np.load(Path(work) / "copy.npy"), np.load(Path(work) / "mapped.npy"))
    rows = [
        "| reader | peak RSS while loading MiB | peak RssAnon while loading MiB | "
        "after loading: RssAnon / RssFile MiB | after one forward: RssAnon / RssFile MiB | "
        "load s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        imported = r["imported"]["RssAnon"]
        rows.append(
            f"| {name} | {mib(r['loaded']['VmHWM'])} | {mib(r['peak_anon']['load'])} | "
            f"{mib(r['loaded']['RssAnon'])} / {mib(r['loaded']['RssFile'])} | "
            f"{mib(r['forward']['RssAnon'])} / {mib(r['forward']['RssFile'])} | "
            f"{r['load_seconds']:.1f} |"
        )
    copy, mapped = results["copy"], results["mapped"]
    if family != "flux1":
        return write_family_section(family, options.type, size, rows, copy, mapped, same, load)
    body = "\n".join(
        [
            f"The full-width random FLUX transformer (hidden 3072, 1 double + 1 single block), "
            f"{options.type}, BFL layout: a {mib(size)} MiB GGUF file. One fresh process per "
            f"reader; after imports each holds about {mib(imported)} MiB of its own memory. "
            "RSS counts the file's pages a process has touched (shared with the page cache); "
            "RssAnon only its own allocations.",
            "",
            *rows,
            "",
            f"Peak RSS while loading: {mib(copy['loaded']['VmHWM'])} → "
            f"{mib(mapped['loaded']['VmHWM'])} MiB "
            f"({mapped['loaded']['VmHWM'] / copy['loaded']['VmHWM']:.2f}×); above the imports, "
            f"{(copy['loaded']['VmHWM'] - copy['imported']['VmRSS']) / size:.2f}× → "
            f"{(mapped['loaded']['VmHWM'] - mapped['imported']['VmRSS']) / size:.2f}× the file. "
            f"Forward outputs identical: {'yes' if same else 'NO'}.",
            "",
            f"Of the {mib(mapped['peak_anon']['load'] - mapped['imported']['RssAnon'])} MiB the "
            f"mapped reader allocates beyond its imports, {mib(2 * f16)} MiB are the F16 tensors "
            f"(input and output layers, {mib(f16)} MiB in this file), which diffusers keeps as plain "
            "tensors and converts to the float32 compute dtype; the rest "
            f"({mib(mapped['peak_anon']['load'] - mapped['imported']['RssAnon'] - 2 * f16)} MiB) is "
            "model set-up both readers pay (the copy reader: "
            f"{mib(copy['peak_anon']['load'] - copy['imported']['RssAnon'] - 2 * f16 - size)} MiB "
            "beyond the file's copy and the same conversions). Quantized weights stay in the "
            "file's pages until a forward pass reads them (RssFile after one forward), shared "
            "with the page cache. A full FLUX.1 file holds proportionally far fewer F16 tensors "
            "(0.5% of its parameters against 12% here).",
        ]
    )
    write_section("gguf_load_memory", "GGUF loading memory", body, ("torch", "diffusers", "gguf"), load)


def write_family_section(family, kind, size, rows, copy, mapped, same, load) -> None:
    from flux_batch import families

    mib = lambda n: f"{n / 2**20:.0f}"  # noqa: E731
    label = families.get(family).label
    layout = "diffusers" if family == "chroma" else "BFL"
    body = "\n".join(
        [
            f"{label}: the family's transformer at full width (hidden 3072, 1 double + 1 single "
            f"block), {kind}, {layout} layout: a {mib(size)} MiB GGUF file. One fresh process per "
            "reader, as in the FLUX.1 section above; `after one forward` is after a second read "
            "of every tensor.",
            "",
            *rows,
            "",
            f"Peak RSS while loading: {mib(copy['loaded']['VmHWM'])} → {mib(mapped['loaded']['VmHWM'])} MiB "
            f"({mapped['loaded']['VmHWM'] / copy['loaded']['VmHWM']:.2f}×). Loaded tensors identical: "
            f"{'yes' if same else 'NO'}.",
        ]
    )
    write_section(
        f"gguf_load_memory_{family}",
        f"GGUF loading memory: {label}",
        body,
        ("torch", "diffusers", "gguf"),
        load,
    )


if __name__ == "__main__":
    main()
