"""Training the demo model's edit variant: `python -m flux_batch.demo.train_edit OUT`.

A FLUX.1 Kontext-style editor fine-tuned from the shipped demo transformer, same architecture:
the input picture's latents (the VAE's mode, shifted and scaled, as FluxKontextPipeline's
`_encode_vae_image` makes them) are packed and appended after the noisy latents' tokens, with
image ids whose first coordinate is 1, exactly as the pipeline's `prepare_latents` does; the
loss is FLUX's rectified-flow objective on the output tokens only. Pairs (flux_batch.demo.edits)
are drawn from a seeded stream and encoded once into a pool (each use draws a fresh output
latent from the VAE's posterior). The VAE and the text encoders are the demo's, frozen. The
guidance value in the embedding is drawn in `guidance_range` with a plain target: an edit's
output is all but fixed by its input and instruction, so the editor needs no guidance and
renders the same at any value.

OUT gets `transformer-Q8_0.gguf` (the project's quantizer, diffusers key layout),
`train-log.jsonl` (every step's loss) and `training.json` (settings, wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flux_batch.demo import EDIT_VERSION, model_dir
from flux_batch.demo import components as C
from flux_batch.demo.edits import all_edits, random_pair
from flux_batch.demo.shapes import paint
from flux_batch.demo.train import Log, add_settings, cosine, images_tensor, publish, update


@dataclass
class Settings:
    seed: int = 0
    # the results depend on it (the order of float sums); one thread, as on cores shared with
    # other work two threads spent most of their CPU time waiting for each other
    threads: int = 1
    pool: int = 4096  # pairs encoded once, the training set
    # moves are the harder edit (the shape redrawn elsewhere, not repainted in place): a
    # 1500-step run at half and half recoloured 97% of shapes right but moved only 60% intact
    move_share: float = 0.65
    steps: int = 2800
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 50
    ema: float = 0.995
    guidance_range: tuple = (1.0, 4.0)
    log_every: int = 50


def instruction_embeddings(pipe):
    """Every instruction's T5 sequence and CLIP pooled embedding, as the pipeline makes them at
    render time (the demo's 12 T5 tokens hold the longest instruction)."""
    import torch

    texts = [e.text() for e in all_edits()]
    longest = max(len(pipe.tokenizer_2(t).input_ids) for t in texts)
    assert longest <= C.T5_TOKENS, f"an instruction takes {longest} T5 tokens"
    with torch.no_grad():
        seq, pooled, _ = pipe.encode_prompt(texts, None, device="cpu", max_sequence_length=C.T5_TOKENS)
    return {t: i for i, t in enumerate(texts)}, seq, pooled


class PairPool:
    """`s.pool` pairs drawn from their own seeded stream, encoded once: the input's latents as
    the pipeline encodes a reference (the posterior's mode), the output's posterior mean and
    spread (each use draws a fresh latent)."""

    def __init__(self, s: Settings, vae, index):
        import torch

        rng = random.Random(s.seed + 1)
        pairs = [random_pair(rng, s.move_share) for _ in range(s.pool)]
        refs, means, stds = [], [], []
        with torch.no_grad():
            for start in range(0, s.pool, 256):
                chunk = pairs[start : start + 256]
                before = vae.encode(images_tensor([paint(p.before) for p in chunk])).latent_dist
                after = vae.encode(images_tensor([paint(p.after) for p in chunk])).latent_dist
                refs.append(before.mode())
                means.append(after.mean)
                stds.append(after.std)
        self.shift, self.scale = vae.config.shift_factor, vae.config.scaling_factor
        self.ref = (torch.cat(refs) - self.shift) * self.scale
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.rows = torch.tensor([index[p.edit.text()] for p in pairs])

    def sample(self, size: int, gen):
        import torch

        picked = torch.randint(len(self.rows), (size,), generator=gen)
        z = self.mean[picked] + self.std[picked] * torch.randn(self.mean[picked].shape, generator=gen)
        return (z - self.shift) * self.scale, self.ref[picked], self.rows[picked]


def token_ids(height: int, width: int):
    """The ids of the output tokens, then the reference's: FluxKontextPipeline's, whose
    reference ids are the output's with the first coordinate set to 1."""
    import torch
    from diffusers import FluxKontextPipeline

    out = FluxKontextPipeline._prepare_latent_image_ids(1, height // 2, width // 2, "cpu", torch.float32)
    ref = out.clone()
    ref[..., 0] = 1
    return torch.cat([out, ref])


def step_inputs(s: Settings, pool: PairPool, seq, pooled, gen) -> dict:
    """One batch: noisy output latents at random times, the reference tokens appended."""
    import torch
    from diffusers import FluxKontextPipeline

    z, ref, rows = pool.sample(s.batch, gen)
    b, ch, h, w = z.shape
    latents = FluxKontextPipeline._pack_latents(z, b, ch, h, w)
    ref = FluxKontextPipeline._pack_latents(ref, b, ch, h, w)
    noise = torch.randn(latents.shape, generator=gen)
    shift = math.exp(C.SCHEDULER["base_shift"])  # the schedule's shift at 64x64 (output tokens)
    t = torch.sigmoid(torch.randn(b, generator=gen))
    t = shift * t / (1 + (shift - 1) * t)
    tt = t[:, None, None]
    low, high = s.guidance_range
    return {
        "hidden_states": torch.cat([(1 - tt) * latents + tt * noise, ref], dim=1),
        "encoder_hidden_states": seq[rows],
        "pooled_projections": pooled[rows],
        "timestep": t,
        "guidance": low + (high - low) * torch.rand(b, generator=gen),
        "img_ids": token_ids(h, w),
        "txt_ids": torch.zeros(seq.shape[1], 3),
        "target": noise - latents,
    }


def demo_pipeline():
    """The shipped demo's text pipeline and VAE (frozen) and its float32 transformer."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    folder = model_dir()
    pipe = FluxPipeline.from_pretrained(folder, transformer=None, vae=None)
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False)
    for module in (pipe.text_encoder, pipe.text_encoder_2):
        module.eval().requires_grad_(False)
    return pipe, vae, FluxTransformer2DModel.from_pretrained(folder / "transformer")


def finetune(s: Settings, log: Log, model, pool: PairPool, seq, pooled):
    import torch

    model = model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.seed + 2)
    for step in range(1, s.steps + 1):
        inputs = step_inputs(s, pool, seq, pooled, gen)
        target = inputs.pop("target")
        out = model(**inputs, return_dict=False)[0][:, : target.shape[1]]  # the output tokens
        loss = torch.nn.functional.mse_loss(out, target)
        update(model, ema, opt, loss, s.lr * cosine(step, s.steps, s.warmup), s.ema, step)
        log.step("edit", step, s.steps, loss=loss.item())
    return ema


def train(out: Path, s: Settings) -> dict:
    """Train into `out` (replaced when done); the same settings give the same weights."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _train_into(tmp, out, s)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when training finished


def _train_into(tmp: Path, out: Path, s: Settings) -> dict:
    import torch

    torch.manual_seed(s.seed)
    log = Log(tmp / "train-log.jsonl", s.log_every)
    pipe, vae, model = demo_pipeline()
    index, seq, pooled = instruction_embeddings(pipe)
    pool = PairPool(s, vae, index)
    stages = {"pool": log.lap()}
    model = finetune(s, log, model, pool, seq, pooled)
    stages["edit"] = log.lap()
    log.file.close()
    _save(tmp, model)
    head = {
        "version": EDIT_VERSION,
        "from": "the shipped demo transformer (flux_batch/demo/model/transformer)",
    }
    return publish(tmp, out, head, s, stages)


def _save(folder: Path, transformer) -> None:
    """Only the Q8_0 GGUF ships: the float32 weights are written to a scratch folder, quantized
    by the project's own quantizer, and dropped (the rest of the pipeline is the demo's)."""
    from flux_batch.gguf.quantize import quantize_checkpoint

    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        transformer.save_pretrained(scratch)
        quantize_checkpoint(
            Path(scratch),
            folder / "transformer-Q8_0.gguf",
            "Q8_0",
            layout="diffusers",
            name=f"flux-batch {EDIT_VERSION}",
        )


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m flux_batch.demo.train_edit",
        description="Fine-tune the demo model into its edit variant (FLUX.1 Kontext-style: "
        "recolour and move) into OUT. The defaults reproduce the shipped weights.",
    )
    add_settings(parser, defaults)
    args = parser.parse_args(argv)
    s = Settings(**{k: v for k, v in vars(args).items() if k != "out"})
    summary = train(args.out, s)
    t = summary["total"]
    print(f"{args.out}: trained {EDIT_VERSION} in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
