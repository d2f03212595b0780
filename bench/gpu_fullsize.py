"""FLUX.1-dev's exact architecture with random weights: seconds per image and peak memory for
bf16 against Q8_0, per_item against phased, batch 1 against 4, compile off and on, and step
caching (none, First Block Cache 0.08, TaylorSeer interval 2) with compile off and on.

    python bench/gpu_fullsize.py                    # on a CUDA GPU: 1024x1024, 28 steps
    python bench/gpu_fullsize.py --scale tiny       # anywhere: the embedded tiny architecture

Nothing is downloaded. The transformer (12 B parameters, 19 double and 38 single blocks), T5-XXL
(4.7 B), CLIP-L and the 16-channel VAE are built with random weights directly on the device in
bfloat16, with FLUX.1-dev's configs; tokenizers are the embedded model's (their ids fit the real
vocabularies). The transformer is quantized to Q8_0 with flux-batch's own GGUF writer, one tensor
at a time, and loaded back through diffusers' from_single_file, as flux-batch loads real files.
Each row renders through flux-batch's schedules (flux_batch/schedule.py): a warm-up batch of 2
steps first (it pays autotuning, and compiling when on), then --images images timed; peak memory is
torch's max_memory_allocated over the timed images. Offload rows use diffusers' model CPU
offload, as for models that do not fit the GPU together; per_item is one pipeline call per
image, the reference script's loop. The bound is --tflop-per-step at the GPU's dense bf16 peak.

On an H100 the first ten rows take about 11 minutes (3 to build and quantize, 2 per compiled
row); `--rows 1,2,3,4,5,7,8,9 --images 2` leaves out the compiled rows and halves the timed
images, `--rows 4,5,6,11,12,13,14,15,16 --images 2` is the caching table (about 9 minutes).
Random weights make First Block Cache's skip decisions unlike a trained model's: its rows show
the cost of the hooks and the speed at the skip rate reached, not FLUX.1-dev's; TaylorSeer's
schedule does not depend on the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import RESULTS, machine, write_section  # noqa: E402

FULL = {  # FLUX.1-dev, as its config files have it
    "transformer": dict(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ),
    "t5": dict(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
    ),
    "clip": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        norm_num_groups=32,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
    "size": 1024,
    "steps": 28,
    "max_sequence_length": 512,
}
TINY = {  # the embedded tiny model's architecture (flux_batch/tiny.py)
    "transformer": dict(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    ),
    "t5": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
    "clip": dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
    ),
    "vae": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
    "size": 32,
    "steps": 2,
    "max_sequence_length": 32,
}


@dataclass(frozen=True)
class Row:
    weights: str  # bf16 | Q8_0
    schedule: str  # per_item | phased
    offload: bool
    batch: int
    compile: bool = False
    cache: str = "none"  # a key of CACHES

    def label(self) -> str:
        return (
            f"{self.weights}, {self.schedule}, {'model offload' if self.offload else 'resident'}, "
            f"batch {self.batch}{', compiled' if self.compile else ''}"
            f"{', ' + CACHES[self.cache][0] if self.cache != 'none' else ''}"
        )


CACHES = {  # name -> (label, flux-batch's cache settings): the config group's defaults
    "none": ("no cache", {}),
    "fbcache": ("First Block Cache 0.08", {"method": "fbcache", "threshold": 0.08}),
    "taylorseer": ("TaylorSeer interval 2", {"method": "taylorseer", "interval": 2, "warmup": 3}),
}


# Q8_0 rows first, then bf16: the idle transformer waits on the CPU, moved once.
ROWS = [
    Row("Q8_0", "per_item", True, 1),  # the reference script's loop
    Row("Q8_0", "phased", True, 1),
    Row("Q8_0", "phased", True, 4),
    Row("Q8_0", "phased", False, 1),
    Row("Q8_0", "phased", False, 4),
    Row("Q8_0", "phased", False, 4, compile=True),
    Row("bf16", "per_item", True, 1),
    Row("bf16", "phased", False, 1),
    Row("bf16", "phased", False, 4),
    Row("bf16", "phased", False, 4, compile=True),
    # step caching, with compile off and on
    Row("Q8_0", "phased", False, 1, cache="fbcache"),
    Row("Q8_0", "phased", False, 4, cache="fbcache"),
    Row("Q8_0", "phased", False, 4, compile=True, cache="fbcache"),
    Row("Q8_0", "phased", False, 1, cache="taylorseer"),
    Row("Q8_0", "phased", False, 4, cache="taylorseer"),
    Row("Q8_0", "phased", False, 4, compile=True, cache="taylorseer"),
]


def build_components(arch: dict, device: str, dtype, work: Path) -> dict:
    """Random-weight components of FLUX.1-dev's shapes, made on `device` in `dtype`."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_batch.families.flux1 import tiny as flux1_tiny

    tokenizers = work / "tokenizers"
    clip_tokenizer = flux1_tiny.clip_tokenizer(tokenizers / "tokenizer")
    t5_tokenizer = flux1_tiny.t5_tokenizer(tokenizers / "tokenizer_2")
    t5 = dict({"vocab_size": len(t5_tokenizer)}, **arch["t5"])
    clip = dict({"vocab_size": len(clip_tokenizer)}, **arch["clip"])
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialised in place: no 48 GB float32 copy on the host
            components = {
                "transformer": FluxTransformer2DModel(**arch["transformer"]),
                "text_encoder_2": T5EncoderModel(
                    T5Config(
                        pad_token_id=t5_tokenizer.pad_token_id, eos_token_id=t5_tokenizer.eos_token_id, **t5
                    )
                ),
                "text_encoder": CLIPTextModel(
                    CLIPTextConfig(
                        bos_token_id=clip_tokenizer.bos_token_id,
                        eos_token_id=clip_tokenizer.eos_token_id,
                        pad_token_id=clip_tokenizer.pad_token_id,
                        **clip,
                    )
                ),
                "vae": AutoencoderKL(**arch["vae"]),
            }
    finally:
        torch.set_default_dtype(previous)
    for module in components.values():
        module.eval().requires_grad_(False)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    components["tokenizer"], components["tokenizer_2"] = clip_tokenizer, t5_tokenizer
    return components


def quantized_copy(transformer, work: Path, dtype):
    """The transformer written as Q8_0 GGUF by flux-batch's writer, loaded back by diffusers."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from flux_batch.gguf.checkpoint import PlannedTensor
    from flux_batch.gguf.file import write_gguf

    config_dir = work / "base"
    transformer.save_config(config_dir / "transformer")
    tensors = [
        PlannedTensor(name, tuple(t.shape), lambda t=t: t.detach().float().cpu())
        for name, t in transformer.state_dict().items()
    ]
    started = time.perf_counter()
    write_gguf(work / "transformer-Q8_0.gguf", tensors, "Q8_0")
    quantize_seconds = time.perf_counter() - started
    started = time.perf_counter()
    quantized = FluxTransformer2DModel.from_single_file(
        str(work / "transformer-Q8_0.gguf"),
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=str(config_dir),
        subfolder="transformer",
        dtype=dtype,
    )
    quantized.eval().requires_grad_(False)
    size = (work / "transformer-Q8_0.gguf").stat().st_size
    return quantized, quantize_seconds, time.perf_counter() - started, size


def items_for(arch: dict, n: int, work: Path) -> list:
    """n items as flux-batch plans them (seeds, settings) from a prompt file."""
    from hydra import compose, initialize_config_module

    from flux_batch.cli import register_configs
    from flux_batch.driver import plan_items

    prompts = work / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"a photo of object number {i}"}) + "\n" for i in range(n)
        )
    )
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"dataset.path={prompts}",
                f"sampler.width={arch['size']}",
                f"sampler.height={arch['size']}",
                f"sampler.steps={arch['steps']}",
                f"sampler.max_sequence_length={arch['max_sequence_length']}",
            ],
        )
        return plan_items(cfg)


def place(pipe, offload: bool, device: str) -> None:
    pipe.remove_all_hooks()
    if offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def schedule_for(pipe, row: Row, arch: dict, device: str, compile_options: dict):
    from flux_batch.config import CacheConfig
    from flux_batch.render import compile as torch_compile
    from flux_batch.render import step_cache
    from flux_batch.render.batch_size import BatchSizer
    from flux_batch.render.encoder import PromptEncoder
    from flux_batch.render.renderer import Renderer
    from flux_batch.render.schedule import Schedule

    torch_compile.OPTIONS = compile_options
    torch_compile.apply(pipe, row.compile)
    step_cache.apply(pipe.transformer, CacheConfig(**CACHES[row.cache][1]))
    encoder = PromptEncoder(pipe, ("bench", row.weights, device), arch["max_sequence_length"])
    render = Renderer(pipe, arch["max_sequence_length"], lambda: False, encoder)
    return Schedule(render, BatchSizer(row.batch), row.schedule == "phased", chunk_size=64)


def run_row(pipe, row: Row, arch: dict, items: list, images: int, device: str, compile_options: dict) -> dict:
    import torch

    from flux_batch.render.encoder import PromptEncoder

    cuda = device.startswith("cuda")
    place(pipe, row.offload and cuda, device)
    schedule = schedule_for(pipe, row, arch, device, compile_options)
    images = -(-images // row.batch) * row.batch  # whole batches: no other shape to compile
    timed = items[row.batch : row.batch + images]
    # the warm-up batch has the timed shapes at 2 steps: autotuning and compiling happen there
    warm = [
        dataclasses.replace(i, settings=dataclasses.replace(i.settings, steps=2)) for i in items[: row.batch]
    ]
    list(schedule(warm))
    PromptEncoder._store.clear()  # every timed prompt is encoded, as in a new run
    PromptEncoder._bytes = 0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    done = list(schedule(timed))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    failed = [d.error for d in done if d.error is not None]
    if failed:
        raise SystemExit(f"{row.label()}: {type(failed[0]).__name__}: {failed[0]}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"seconds_per_image": seconds / len(timed), "peak_gib": peak, "timing": schedule.timing()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--images", type=int, default=4, help="timed images per row")
    parser.add_argument("--rows", default="all", help="comma-separated row numbers (1-based), or all")
    parser.add_argument("--batch", type=int, default=4, help="the large batch size of the table")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument(
        "--tflop-per-step", type=float, default=74.0, help="dense work of one 1024x1024 step of FLUX.1-dev"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    a = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.scale == "full" and device == "cpu":
        raise SystemExit(
            "gpu_fullsize.py: --scale full needs a CUDA GPU (it builds 17 B parameters "
            "in bfloat16); use --scale tiny on a CPU"
        )
    arch = FULL if a.scale == "full" else TINY
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    numbers = range(1, len(ROWS) + 1) if a.rows == "all" else [int(i) for i in a.rows.split(",")]
    rows = [
        (n, ROWS[n - 1] if ROWS[n - 1].batch == 1 else dataclasses.replace(ROWS[n - 1], batch=a.batch))
        for n in numbers
    ]
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-fullsize-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))

    from diffusers import FluxPipeline

    started = time.perf_counter()
    parts = build_components(arch, device, dtype, work)
    build_seconds = time.perf_counter() - started
    bf16 = parts.pop("transformer")
    quantized, quantize_seconds, load_seconds, gguf_bytes = quantized_copy(bf16, work, dtype)
    pipes = {
        "bf16": FluxPipeline(transformer=bf16, **parts),
        "Q8_0": FluxPipeline(transformer=quantized, **parts),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    bf16.to("cpu")
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    items = items_for(arch, 2 * max(r.batch for _, r in rows) + a.images, work)
    results = []
    current = None
    for number, row in rows:
        if current not in (None, row.weights):  # the other transformer leaves the GPU first
            pipes[current].remove_all_hooks()
            pipes[current].transformer.to("cpu")
            gc.collect()
            torch.cuda.empty_cache() if device == "cuda" else None
        current = row.weights
        result = run_row(
            pipes[row.weights], row, arch, items, a.images, device, {"backend": a.compile_backend}
        )
        results.append((number, row, result))
        print(
            f"{row.label()}: {result['seconds_per_image']:.3f} s/image, "
            f"peak {result['peak_gib'] or 0:.1f} GiB ({result['timing']})",
            flush=True,
        )
    write_section(
        f"gpu_fullsize_{a.scale}",
        f"FLUX.1-dev architecture, random weights ({a.scale} scale)",
        report(a, arch, device, results, build_seconds, quantize_seconds, load_seconds, gguf_bytes),
        ("torch", "diffusers", "transformers"),
        start_load,
        a.results,
    )


def report(a, arch, device, results, build_s, quantize_s, load_s, gguf_bytes) -> str:
    import torch

    gpu = torch.cuda.get_device_name() if device == "cuda" else "none (CPU)"
    lines = [
        f"GPU: {gpu}. {arch['size']}x{arch['size']}, {arch['steps']} steps, {arch['max_sequence_length']} "
        f"T5 tokens, {a.images} timed images per row after a warm-up batch. Built in {build_s:.0f} s; "
        f"Q8_0 GGUF ({gguf_bytes / 2**30:.2f} GiB) written in {quantize_s:.0f} s and loaded in {load_s:.0f} s.",
        "",
        "| # | transformer, schedule, placement, batch | s/image | s/step | peak GiB | vs the per_item offload loop |",
        "|---|---|---:|---:|---:|---:|",
    ]
    reference = {
        r.weights: res["seconds_per_image"] for _, r, res in results if r.schedule == "per_item" and r.offload
    }
    for number, row, res in results:
        s = res["seconds_per_image"]
        peak = f"{res['peak_gib']:.1f}" if res["peak_gib"] is not None else "-"
        ratio = f"{reference[row.weights] / s:.2f}x" if row.weights in reference else "-"
        lines.append(f"| {number} | {row.label()} | {s:.2f} | {s / arch['steps']:.3f} | {peak} | {ratio} |")
    lines += ["", *targets(a, arch, device, results)]
    if device == "cpu":
        lines.append(
            "- On a CPU the offload rows run resident (model offload needs CUDA), no peak GPU memory."
        )
    return "\n".join(lines)


def targets(a, arch, device, results) -> list[str]:
    if device != "cuda":
        return [
            "- Targets (Q8_0 within 1.10x of bf16 at batch 4, phased at least 1.5x the per_item "
            "offload loop, the 2.1 s bound) apply to the full scale on a GPU only."
        ]
    by = {row: res["seconds_per_image"] for _, row, res in results}
    found = []
    q4, b4 = by.get(Row("Q8_0", "phased", False, 4)), by.get(Row("bf16", "phased", False, 4))
    if q4 and b4:
        met = "met" if q4 <= 1.10 * b4 else "NOT met"
        found.append(f"- Q8_0 within 1.10x of bf16 s/image at batch 4: {q4 / b4:.2f}x, **{met}**.")
    ref, phased = by.get(Row("Q8_0", "per_item", True, 1)), by.get(Row("Q8_0", "phased", True, 4))
    if ref and phased:
        met = "met" if ref / phased >= 1.5 else "NOT met"
        found.append(
            f"- phased (model offload, batch 4) at least 1.5x the per_item offload loop, Q8_0: "
            f"{ref / phased:.2f}x, **{met}**."
        )
    for row, seconds in by.items():  # each cached row against the same row without the cache
        plain = by.get(dataclasses.replace(row, cache="none"))
        if row.cache != "none" and plain:
            found.append(
                f"- {row.label()}: {plain / seconds:.2f}x the speed of the same row without a cache."
            )
    if arch is FULL:
        bound = a.tflop_per_step * 1e12 * arch["steps"] / (a.peak_tflops * 1e12)
        best = min(by.values())
        found.append(
            f"- Bound: {a.tflop_per_step:g} TFLOP per step at {a.peak_tflops:g} TFLOP/s is "
            f"{bound:.2f} s per 28-step image; the best row takes {best:.2f} s ({best / bound:.1f}x the bound)."
        )
    return found


if __name__ == "__main__":
    main()
