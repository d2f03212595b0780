"""LoRAs applied at run time against LoRAs baked into the GGUF (`flux-batch-gguf merge-lora`).

    python bench/merge_lora.py [--steps 8] [--loras 2] [--repeat 3] [--threads 1]

Speed: the mid-size random transformer (bench/mid_model.py) as Q8_0, each variant in its own
process: no LoRA; --loras LoRAs (rank 16 on every linear layer of the blocks) loaded as
adapters at run time, as `lora=[...]` does; the same LoRAs baked into a Q8_0 file. Seconds per
transformer call at 128x128 (batch 1, one warm-up), --repeat rounds in alternating order,
medians of the seconds and of each round's ratio to no LoRA. Target: baked within 1.03x of no
LoRA.

Quality: the demo model renders demo-eval.jsonl (36 prompts) with one LoRA (rank 4 on its
attention layers) at run time on its Q8_0 file and from the same LoRA baked into Q8_0 from its
F32 file; `flux-batch-eval --reference` gives the PSNR of the baked images against the run-time
ones, and the accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mid_model  # noqa: E402
from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent
VARIANTS = ("no LoRA", "LoRAs at run time", "LoRAs baked")
BLOCK_LAYERS = (
    ".attn.to_q",
    ".attn.to_k",
    ".attn.to_v",
    ".attn.to_out.0",
    ".attn.add_q_proj",
    ".attn.add_k_proj",
    ".attn.add_v_proj",
    ".attn.to_add_out",
    ".ff.net.0.proj",
    ".ff.net.2",
    ".ff_context.net.0.proj",
    ".ff_context.net.2",
    ".proj_mlp",
    ".proj_out",
)


def write_lora(
    path: Path, weights: Path, rank: int, seed: int, magnitude: float, layers=BLOCK_LAYERS
) -> Path:
    """A random LoRA in diffusers' PEFT layout over the block layers of a transformer."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in sorted(load_file(weights).items()):
        module = key.removesuffix(".weight")
        if value.ndim == 2 and "blocks." in module and module.endswith(layers):
            out_dim, in_dim = value.shape
            state[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * magnitude
            state[f"transformer.{module}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * magnitude
    save_file(state, str(path))
    return path


def measure(folder: str, variant: str, loras: list[str], steps: int) -> dict:
    """Runs in the child process: load one variant, time `steps` transformer calls."""
    import time

    import torch
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from safetensors.torch import load_file

    gguf = f"{folder}/transformer-{'baked' if variant == 'LoRAs baked' else 'Q8_0'}.gguf"
    model = FluxTransformer2DModel.from_single_file(
        gguf,
        config=folder,
        subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        dtype=torch.float32,
    )
    if variant == "LoRAs at run time":
        for i, path in enumerate(loras):
            model.load_lora_adapter(load_file(path), prefix="transformer", adapter_name=f"l{i}")
        model.set_adapters([f"l{i}" for i in range(len(loras))], [1.0] * len(loras))
    g = torch.Generator().manual_seed(0)
    tokens, text = 64, 32
    inputs = dict(
        hidden_states=torch.randn(1, tokens, 64, generator=g),
        encoder_hidden_states=torch.randn(1, text, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.full((1,), 0.5),
        guidance=torch.full((1,), 3.5),
        img_ids=torch.zeros(tokens, 3),
        txt_ids=torch.zeros(text, 3),
        return_dict=False,
    )
    with torch.no_grad():
        model(**inputs)
        started = time.perf_counter()
        for _ in range(steps):
            model(**inputs)
    return {"seconds_per_step": (time.perf_counter() - started) / steps}


def merge(src: Path, out: Path, loras: list[Path], qtype: str, env: dict) -> None:
    args = [str(BIN / "flux-batch-gguf"), "merge-lora", str(src), str(out), "--type", qtype, "--force"]
    for path in loras:
        args += ["--lora", str(path)]
    subprocess.run(args, check=True, capture_output=True, env=env)


def quality(work: Path, env: dict) -> dict:
    """PSNR and accuracy of the demo model's images from a baked LoRA against run-time LoRA."""
    from flux_batch import demo

    demo_dir = demo.model_dir()
    lora = write_lora(
        work / "demo-lora.safetensors",
        demo_dir / "transformer" / "diffusion_pytorch_model.safetensors",
        rank=4,
        seed=1,
        magnitude=0.05,
        layers=(".attn.to_q", ".attn.to_k", ".attn.to_v"),
    )
    baked = work / "demo-baked-Q8_0.gguf"
    merge(demo.ensure_built("F32"), baked, [lora], "Q8_0", env)
    common = [
        str(BIN / "flux-batch"),
        "model=demo",
        f"dataset.path={ROOT}/flux_batch/prompts/demo-eval.jsonl",
        "batch_size=4",
        "runtime.progress=false",
    ]
    runs = {
        "runtime": [f"lora=[{{path:{lora},scale:1}}]"],
        "baked": [f"model.transformer={baked}"],
        "none": [],
    }
    for name, extra in runs.items():
        subprocess.run(
            [*common, f"output.dir={work / name}", *extra], check=True, capture_output=True, env=env
        )
    scores = {}
    for name in runs:
        out = work / f"{name}.eval.json"
        subprocess.run(
            [
                str(BIN / "flux-batch-eval"),
                str(work / name),
                "--reference",
                str(work / "runtime"),
                "-o",
                str(out),
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        scores[name] = json.loads(out.read_text())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--loras", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        folder, variant, loras = a.child
        print(json.dumps(measure(folder, variant, json.loads(loras), a.steps)))
        return
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-merge-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))
    folder = mid_model.build(work / "mid")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    loras = [
        write_lora(work / f"lora-{i}.safetensors", weights, rank=16, seed=i, magnitude=0.02)
        for i in range(a.loras)
    ]
    merge(folder / "transformer-Q8_0.gguf", folder / "transformer-baked.gguf", loras, "Q8_0", env)
    runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(a.repeat):
        for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(a.steps),
                    "--child",
                    str(folder),
                    variant,
                    json.dumps([str(p) for p in loras]),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:
                raise SystemExit(f"{variant}: {out.stderr[-2000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"])
        print(r, {v: round(x[-1], 4) for v, x in runs.items()}, flush=True)
    rows = ["| transformer (Q8_0, batch 1) | s/step | vs no LoRA |", "|---|---:|---:|"]
    ratios = {}
    for variant, seconds in runs.items():
        ratios[variant] = statistics.median(s / base for s, base in zip(seconds, runs["no LoRA"]))
        rows.append(
            f"| {variant if variant == 'no LoRA' else f'{a.loras} {variant}'} | "
            f"{statistics.median(seconds):.4f} | {ratios[variant]:.3f}x |"
        )
    scores = quality(work, env)
    psnr = scores["baked"]["psnr"]
    accuracy = {
        name: ", ".join(f"{k} {v['accuracy'] * 100:.1f}" for k, v in s["accuracy"].items())
        for name, s in scores.items()
    }
    body = "\n".join(
        [
            f"Speed: the mid-size random transformer ({mid_model.parameters(folder) / 1e6:.0f} M parameters), "
            f"{a.loras} LoRAs of rank 16 on every linear layer of its blocks, 128x128, {a.steps} timed calls "
            f"after one warm-up, torch threads {a.threads}, medians of {a.repeat} alternating rounds.",
            "",
            *rows,
            "",
            f"Target: baked within 1.03x of no LoRA: **{'met' if ratios['LoRAs baked'] <= 1.03 else 'NOT met'}** "
            f"({ratios['LoRAs baked']:.3f}x; the run-time adapters cost {ratios['LoRAs at run time']:.2f}x).",
            "",
            "Quality: the demo model, demo-eval.jsonl (36 prompts), one rank-4 LoRA on its attention layers; "
            f"baked into Q8_0 from the F32 file against the run-time LoRA on the Q8_0 file: PSNR mean "
            f"{psnr['mean_db']} dB, min {psnr['min_db']} dB over {psnr['pairs']} images (no LoRA against "
            f"the run-time LoRA: {scores['none']['psnr']['mean_db']} dB mean). Accuracy (%): run-time "
            f"{accuracy['runtime']}; baked {accuracy['baked']}; no LoRA {accuracy['none']}.",
        ]
    )
    write_section(
        "merge_lora",
        "LoRAs baked into the GGUF (merge-lora)",
        body,
        ("torch", "diffusers", "peft"),
        start_load,
    )


if __name__ == "__main__":
    main()
