"""Training the demo model: `python -m flux_batch.demo.train OUT`.

Four stages on pictures drawn from seeded streams (flux_batch.demo.shapes):
1. the VAE, as an autoencoder with a small KL term, the shape's pixels weighing more than the
   background's; its latent mean and spread then set the VAE's shift and scaling factors, as
   FLUX's VAE config carries them;
2. the transformer, on a pool of pictures encoded once, with FLUX's rectified-flow objective
   (predict noise - latent at a shifted logit-normal time), 10% of captions dropped, and, in
   its second half, guidance distillation as FLUX.1-dev was trained: on half of each batch a
   guidance value g is drawn and the target is the classifier-free-guided velocity of the EMA
   teacher, v(empty) + g (v(caption) - v(empty));
3. optionally (off by default), the transformer again from stage 2's EMA weights, every step
   distilled, with a fresh optimizer and its own noise stream;
4. the VAE decoder alone (the latents stay as the transformer learnt them), its own stream.
The text encoders stay random and frozen. Stages 3 and 4 depend on earlier stages only through
their saved weights, so `--resume DIR` continues a folder trained with them off and gives the
same numbers. OUT becomes a diffusers pipeline folder (the transformer in float32 safetensors)
plus `transformer-Q8_0.gguf` written by the project's quantizer, `train-log.jsonl` (every
step's losses) and `training.json` (settings, wall and CPU seconds per stage).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flux_batch.demo import VERSION
from flux_batch.demo import components as C
from flux_batch.demo.shapes import all_captions, draw, random_caption


@dataclass
class Settings:
    seed: int = 0
    threads: int = 2  # the results depend on it (the order of float sums)
    vae_steps: int = 600
    vae_batch: int = 8
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    shape_weight: float = 4.0  # extra weight, in the VAE's loss, of the pixels a shape covers
    pool: int = 16384  # pictures encoded once, the transformer's training set
    steps: int = 6000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.999
    caption_dropout: float = 0.1
    distill_from: float = 0.5  # fraction of the steps after which guidance is distilled
    guidance_range: tuple = (1.0, 6.0)
    finetune_steps: int = 0  # stage 3 off: the shipped transformer is stage 2's EMA
    finetune_lr: float = 4e-4
    finetune_warmup: int = 50
    decoder_steps: int = 300
    decoder_lr: float = 5e-4
    log_every: int = 50


class Log:
    """Progress on stdout, every step's losses in train-log.jsonl."""

    def __init__(self, path: Path, every: int, append: bool = False):
        self.file = open(path, "a" if append else "w")
        self.every = every
        self.start_wall, self.start_cpu = time.perf_counter(), cpu_seconds()
        self.lap_wall, self.lap_cpu = 0.0, 0.0

    def lap(self) -> dict:
        """Seconds since the previous lap, wall and CPU; printed."""
        wall, cpu = self.wall() - self.lap_wall, self.cpu() - self.lap_cpu
        self.lap_wall, self.lap_cpu = self.wall(), self.cpu()
        print(f"stage done in {wall:.0f} s wall, {cpu:.0f} CPU-s", flush=True)
        return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}

    def step(self, stage: str, step: int, total: int, **losses: float) -> None:
        self.file.write(
            json.dumps({"stage": stage, "step": step, **{k: round(v, 6) for k, v in losses.items()}}) + "\n"
        )
        if step % self.every == 0 or step == total:
            shown = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            print(f"{stage} {step}/{total} {shown} ({self.wall():.0f} s, {self.cpu():.0f} CPU-s)", flush=True)

    def wall(self) -> float:
        return time.perf_counter() - self.start_wall

    def cpu(self) -> float:
        return cpu_seconds() - self.start_cpu


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def images_tensor(images):
    import numpy as np
    import torch

    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def train_vae(s: Settings, rng: random.Random, log: Log):
    import torch

    torch.manual_seed(s.seed)
    vae = C.vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.seed)
    for step in range(1, s.vae_steps + 1):
        x = images_tensor([draw(random_caption(rng), rng) for _ in range(s.vae_batch)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        mse = weighted_mse(recon, x, s.shape_weight)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        for group in opt.param_groups:
            group["lr"] = s.vae_lr * cosine(step, s.vae_steps, 20)
        opt.zero_grad()
        (mse + s.kl_weight * kl).backward()
        opt.step()
        log.step("vae", step, s.vae_steps, mse=mse.item(), kl=kl.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # latent statistics -> FLUX-style shift and scaling factors
        x = images_tensor([draw(random_caption(rng), rng) for _ in range(256)])
        latents = vae.encode(x).latent_dist.mean
    vae.register_to_config(
        shift_factor=round(latents.mean().item(), 4), scaling_factor=round(1.0 / latents.std().item(), 4)
    )
    return vae


def finetune_decoder(s: Settings, log: Log, vae):
    """Stage 4: the VAE decoder alone, on its own data stream, as Stable Diffusion's ft-MSE
    decoder was: the encoder and so the latents the transformer learnt stay as they are."""
    import torch

    rng, gen = random.Random(s.seed + 4), torch.Generator().manual_seed(s.seed + 5)
    vae.requires_grad_(False).decoder.requires_grad_(True).train()
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=s.decoder_lr, weight_decay=0.0)
    for step in range(1, s.decoder_steps + 1):
        x = images_tensor([draw(random_caption(rng), rng) for _ in range(s.vae_batch)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(gen)
        mse = weighted_mse(vae.decode(z).sample, x, s.shape_weight)
        for group in opt.param_groups:
            group["lr"] = s.decoder_lr * cosine(step, s.decoder_steps, 20)
        opt.zero_grad()
        mse.backward()
        opt.step()
        log.step("decoder", step, s.decoder_steps, mse=mse.item())
    return vae.eval().requires_grad_(False)


def weighted_mse(recon, x, shape_weight: float):
    """Squared error with the shape's pixels weighing 1 + shape_weight: the background fills
    most of a picture, and a plain mean lets the shape's hue and edges drift."""
    import torch

    from flux_batch.demo.shapes import BACKGROUND

    background = torch.tensor(BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1) / 127.5 - 1.0
    shape = ((x - background).abs().amax(1, keepdim=True) > 0.05).to(x.dtype)
    return ((1 + shape_weight * shape) * (recon - x) ** 2).mean()


def cosine(step: int, total: int, warmup: int) -> float:
    if step <= warmup:
        return step / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def caption_embeddings(pipe):
    """Every caption's T5 sequence and CLIP pooled embedding, exactly as the pipeline makes
    them at render time, and the empty caption's (for dropout and guidance)."""
    import torch

    texts = [c.text() for c in all_captions()] + [""]
    with torch.no_grad():
        seq, pooled, _ = pipe.encode_prompt(texts, None, device="cpu", max_sequence_length=C.T5_TOKENS)
    return {t: i for i, t in enumerate(texts)}, seq, pooled


class LatentPool:
    """The transformer's training set: `s.pool` pictures drawn from their own seeded stream and
    encoded once (posterior mean and spread); each use draws a fresh latent from the posterior.
    Encoding every batch anew cost as much as the transformer's own step."""

    def __init__(self, s: Settings, vae, index):
        import torch

        rng = random.Random(s.seed + 6)
        captions = [random_caption(rng) for _ in range(s.pool)]
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, s.pool, 256):
                x = images_tensor([draw(c, rng) for c in captions[start : start + 256]])
                posterior = vae.encode(x).latent_dist
                means.append(posterior.mean)
                stds.append(posterior.std)
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.rows = torch.tensor([index[c.text()] for c in captions])
        self.shift, self.scale = vae.config.shift_factor, vae.config.scaling_factor

    def sample(self, size: int, gen):
        import torch

        picked = torch.randint(len(self.rows), (size,), generator=gen)
        z = self.mean[picked] + self.std[picked] * torch.randn(self.mean[picked].shape, generator=gen)
        return (z - self.shift) * self.scale, self.rows[picked]


class Batch:
    """A batch of latents at random times, with their captions' embeddings."""

    def __init__(self, s: Settings, gen, pool: LatentPool, seq, pooled, empty: int):
        import torch
        from diffusers import FluxPipeline

        z, rows = pool.sample(s.batch, gen)
        b, ch, h, w = z.shape
        self.latents = FluxPipeline._pack_latents(z, b, ch, h, w)
        self.noise = torch.randn(self.latents.shape, generator=gen)
        shift = math.exp(C.SCHEDULER["base_shift"])  # the schedule's shift at 64x64
        t = torch.sigmoid(torch.randn(b, generator=gen))
        self.t = shift * t / (1 + (shift - 1) * t)
        tt = self.t[:, None, None]
        self.noisy = (1 - tt) * self.latents + tt * self.noise
        self.target = self.noise - self.latents
        self.keep = torch.rand(b, generator=gen) >= s.caption_dropout
        rows = torch.where(self.keep, rows, empty)
        self.seq, self.pooled = seq[rows], pooled[rows]
        self.empty_seq, self.empty_pooled = seq[[empty] * b], pooled[[empty] * b]
        self.img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
        self.txt_ids = torch.zeros(seq.shape[1], 3)


def predict(model, batch: Batch, rows, seq, pooled, guidance):
    return model(
        hidden_states=batch.noisy[rows],
        encoder_hidden_states=seq,
        pooled_projections=pooled,
        timestep=batch.t[rows],
        guidance=guidance,
        img_ids=batch.img_ids,
        txt_ids=batch.txt_ids,
        return_dict=False,
    )[0]


def distill(s: Settings, batch: Batch, teacher, gen):
    """Half the captioned examples get a guidance value and the teacher's guided velocity."""
    import torch

    b = batch.t.shape[0]
    guidance = torch.ones(b)
    target = batch.target.clone()
    rows = torch.nonzero(batch.keep & (torch.rand(b, generator=gen) < 0.5)).flatten()
    if len(rows):
        low, high = s.guidance_range
        g = low + (high - low) * torch.rand(len(rows), generator=gen)
        ones = torch.ones(len(rows))
        with torch.no_grad():
            cond = predict(teacher, batch, rows, batch.seq[rows], batch.pooled[rows], ones)
            uncond = predict(teacher, batch, rows, batch.empty_seq[rows], batch.empty_pooled[rows], ones)
        target[rows] = uncond + g[:, None, None] * (cond - uncond)
        guidance[rows] = g
    return guidance, target


def train_transformer(s: Settings, log: Log, data):
    import torch

    torch.manual_seed(s.seed)
    stage = Stage("transformer", s.steps, s.lr, s.warmup, s.distill_from, s.seed + 1)
    return flow_stage(s, stage, C.transformer(), log, data)


def finetune_transformer(s: Settings, log: Log, data, model):
    """Stage 3: from stage 2's EMA weights, a fresh optimizer and its own noise stream, every
    step distilled. It depends on stage 2 only through the saved weights, so it can be run
    again from a folder that holds them (--resume)."""
    stage = Stage("finetune", s.finetune_steps, s.finetune_lr, s.finetune_warmup, 0.0, s.seed + 3)
    return flow_stage(s, stage, model, log, data)


@dataclass
class Stage:
    name: str
    steps: int
    lr: float
    warmup: int
    distill_from: float  # fraction of the steps after which guidance is distilled
    noise_seed: int  # pictures picked, latents' noise, times, dropout, guidance values


class FlowData:
    """What the transformer's stages learn from: the latent pool and the captions' embeddings."""

    def __init__(self, s: Settings, vae, pipe):
        index, self.seq, self.pooled = caption_embeddings(pipe)
        self.empty = index[""]
        self.pool = LatentPool(s, vae, index)

    def batch(self, s: Settings, gen) -> "Batch":
        return Batch(s, gen, self.pool, self.seq, self.pooled, self.empty)


def flow_stage(s: Settings, stage: Stage, model, log: Log, data: FlowData):
    import torch

    model = model.train().requires_grad_(True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(stage.noise_seed)
    all_rows = torch.arange(s.batch)
    for step in range(1, stage.steps + 1):
        batch = data.batch(s, gen)
        if step > stage.distill_from * stage.steps:
            guidance, target = distill(s, batch, ema, gen)
        else:
            guidance, target = torch.ones(s.batch), batch.target
        out = predict(model, batch, all_rows, batch.seq, batch.pooled, guidance)
        loss = torch.nn.functional.mse_loss(out, target)
        update(model, ema, opt, loss, stage.lr * cosine(step, stage.steps, stage.warmup), s.ema, step)
        log.step(stage.name, step, stage.steps, loss=loss.item())
    return ema


def text_pipeline(folder: Path):
    """Tokenizers and frozen encoders, saved into `folder`, in a pipeline that encodes prompts."""
    from diffusers import FluxPipeline

    clip_tok = C.clip_tokenizer(folder / "tokenizer")
    t5_tok = C.t5_tokenizer(folder / "tokenizer_2")
    clip, t5 = C.text_encoders(clip_tok, t5_tok)
    clip.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    return FluxPipeline(
        scheduler=C.scheduler(),
        vae=None,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=None,
    )


STAGES = {  # stage -> the settings its result depends on (besides the earlier stages')
    "vae": ("seed", "threads", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "shape_weight"),
    "transformer": ("steps", "pool", "batch", "lr", "warmup", "ema", "caption_dropout", "distill_from"),
    "finetune": ("finetune_steps", "finetune_lr", "finetune_warmup", "guidance_range"),
    "decoder": ("decoder_steps", "decoder_lr"),
}


def train(out: Path, s: Settings, resume: Path | None = None) -> dict:
    """Train into `out` (replaced atomically when done); the same settings give the same weights.
    `resume`: a folder trained with these settings but later stages off (their steps 0); its
    stages are loaded, not rerun, which gives the same numbers as running them again."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(out, s, resume)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(out: Path, s: Settings, resume: Path | None) -> dict:
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        return _train_into(tmp, out, s, resume)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when training finished


def _train_into(tmp: Path, out: Path, s: Settings, resume: Path | None) -> dict:

    vae = transformer = None
    stages: dict = {}
    if resume:
        vae, transformer, stages = _resumed(resume, s)
        shutil.copy(resume / "train-log.jsonl", tmp / "train-log.jsonl")
    log = Log(tmp / "train-log.jsonl", s.log_every, append=bool(resume))
    pipe = text_pipeline(tmp)
    data = None
    if "vae" not in stages:
        vae = train_vae(s, random.Random(s.seed), log)
        stages["vae"] = log.lap()
        data = FlowData(s, vae, pipe)
        transformer = train_transformer(s, log, data)
        stages["transformer"] = log.lap()
    if s.finetune_steps and "finetune" not in stages:
        data = data or FlowData(s, vae, pipe)  # resumed: the same numbers, from the saved VAE
        transformer = finetune_transformer(s, log, data, transformer)
        stages["finetune"] = log.lap()
    if s.decoder_steps and "decoder" not in stages:
        vae = finetune_decoder(s, log, vae)
        stages["decoder"] = log.lap()
    log.file.close()
    _save(tmp, vae, transformer)
    return publish(tmp, out, {"version": VERSION}, s, stages)


def publish(tmp: Path, out: Path, head: dict, s, stages: dict) -> dict:
    """`tmp`'s training.json (`head`, the settings, each stage's and the total wall and CPU
    seconds), then `tmp` put in `out`'s place; the summary."""
    import torch

    total = {k: round(sum(stage[k] for stage in stages.values()), 1) for k in ("wall_s", "cpu_s")}
    summary = {**head, "settings": asdict(s), "stages": stages, "total": total, "torch": torch.__version__}
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return summary


def _resumed(folder: Path, s: Settings):
    """The VAE, transformer and stage times of a folder whose stages these settings continue."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    before = json.loads((folder / "training.json").read_text())
    stages = before.get("stages") or {  # a summary from before stage times: stages 1 and 2
        "vae": before["vae"],
        "transformer": {k: round(before["total"][k] - before["vae"][k], 1) for k in ("wall_s", "cpu_s")},
    }
    settings = {**{"finetune_steps": 0, "decoder_steps": 0}, **before["settings"]}
    for stage in stages:
        for key in STAGES[stage]:
            if key in settings and list(np_tuple(settings[key])) != list(np_tuple(getattr(s, key))):
                raise SystemExit(
                    f"{folder}: its {stage} stage was trained with {key}={settings[key]}, "
                    f"not {getattr(s, key)}"
                )
    later = [stage for stage in STAGES if stage not in stages and settings[STAGES[stage][0]]]
    if later:
        raise SystemExit(
            f"{folder}: it was trained with {', '.join(later)} steps but holds no "
            "such stage; resume only from a finished folder with later stages off"
        )
    return (
        AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False),
        FluxTransformer2DModel.from_pretrained(folder / "transformer"),
        dict(stages),
    )


def np_tuple(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _save(folder: Path, vae, transformer) -> None:
    from flux_batch.gguf.quantize import quantize_checkpoint

    vae.save_pretrained(folder / "vae")
    transformer.save_pretrained(folder / "transformer")
    C.scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(C.MODEL_INDEX, indent=2) + "\n")
    quantize_checkpoint(
        folder / "transformer",
        folder / "transformer-Q8_0.gguf",
        "Q8_0",
        layout="diffusers",
        name=f"flux-batch {VERSION}",
    )


def update(model, ema, opt, loss, lr: float, ema_decay: float, step: int) -> None:
    """One optimizer step at `lr` (gradients clipped to norm 1), then the EMA weights moved
    towards the model's (a decay warming up to `ema_decay`)."""
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def add_settings(parser: argparse.ArgumentParser, defaults) -> None:
    """OUT, and a `--name` option for each number of a training's settings (a dataclass)."""
    parser.add_argument("out", type=Path, help="folder to write (replaced when it exists)")
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float)):
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m flux_batch.demo.train",
        description="Train the demo model (a tiny FLUX drawing coloured shapes) into OUT. "
        "The defaults reproduce the shipped weights.",
    )
    add_settings(parser, defaults)
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue a folder trained with the same settings but later stages "
        "off (e.g. --finetune-steps 0): its stages are loaded, the rest run",
    )
    args = parser.parse_args(argv)
    s = Settings(**{k: v for k, v in vars(args).items() if k not in ("out", "resume")})
    summary = train(args.out, s, args.resume)
    t = summary["total"]
    print(f"{args.out}: trained {VERSION} in {t['wall_s']:.0f} s wall, {t['cpu_s']:.0f} CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
