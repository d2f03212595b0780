"""The memory plan of docs/models.md: which settings fit a 24, 48, 80 and 141 GB GPU for each
family, computed from the sizes of the files a run loads.

    python bench/memory_plan.py            # prints the Markdown table docs/models.md holds

A file's size is its parameters times the bits per weight of its type (GGUF Q8_0 stores 34
bytes per 32 weights, Q6_K 210 per 256, Q4_K 144 per 256; bf16 2 bytes): the published
files' sizes within a few percent. Peak GPU memory per setting:
- `resident`: text encoder + transformer + VAE on the GPU together (runtime.schedule=direct);
- `phased`: the text encoder alone on the GPU while a chunk's prompts are encoded, then the
  transformer and VAE (runtime.schedule=phased): the larger of the two phases;
- `encoder on CPU`: the transformer and VAE only (runtime.encoder_device=cpu; the encoder runs
  in host memory, and the embedding cache spares a sweep or a resume from running it again);
each plus the activations of one 1024x1024 image and CUDA's own context (HEADROOM_GB).
"""

from __future__ import annotations

GB = 1e9
HEADROOM_GB = 4.0  # activations at 1024x1024, batch 1, and the CUDA context
GPUS = (24, 48, 80, 141)
BITS = {"Q4_K": 4.5, "Q6_K": 6.5625, "Q8_0": 8.5, "bf16": 16.0}  # bits per weight
TRANSFORMER_TYPES = ("Q4_K", "Q8_0", "bf16")

# family -> (label, transformer parameters, text encoders' parameters, VAE parameters), in
# billions; the encoders are in bf16 as their pipeline folders ship them
FAMILIES = {
    "flux1": ("FLUX.1 [dev], Krea, Kontext (12 B)", 11.9, 4.76 + 0.12, 0.08),
    "flux2": ("FLUX.2 [dev] (32 B, Mistral-3 24 B)", 32.2, 24.0, 0.08),
    "flux2-klein-4b": ("FLUX.2 [klein] 4B (Qwen3 4B)", 3.9, 4.0, 0.08),
    "flux2-klein-9b": ("FLUX.2 [klein] 9B (Qwen3 8B)", 9.1, 8.2, 0.08),
    "chroma": ("Chroma (8.9 B, T5-XXL)", 8.9, 4.76, 0.08),
}


def size_gb(parameters_b: float, kind: str) -> float:
    return parameters_b * 1e9 * BITS[kind] / 8 / GB


def peaks(family: str, kind: str) -> dict[str, float]:
    """Peak GPU memory in GB of each placement, for a transformer of `kind`."""
    _, transformer, encoder, vae = FAMILIES[family]
    t, e, v = size_gb(transformer, kind), size_gb(encoder, "bf16"), size_gb(vae, "bf16")
    return {
        "resident": e + t + v + HEADROOM_GB,
        "phased": max(e, t + v) + HEADROOM_GB,
        "encoder on CPU": t + v + HEADROOM_GB,
    }


def best(family: str, gpu: int) -> str:
    """The highest-precision transformer type that fits, with the least demanding placement
    that allows it (resident first: it re-encodes nothing and moves nothing)."""
    for kind in reversed(TRANSFORMER_TYPES):
        for placement, peak in peaks(family, kind).items():
            if peak <= gpu:
                return f"{kind}, {placement} ({peak:.0f} GB)"
    return "does not fit"


def table() -> str:
    head = "| family | transformer Q8_0 / bf16 | text encoder bf16 | " + " | ".join(
        f"{gpu} GB GPU" for gpu in GPUS
    )
    rows = [head + " |", "|" + "---|" * (3 + len(GPUS))]
    for family, (label, transformer, encoder, _) in FAMILIES.items():
        sizes = f"{size_gb(transformer, 'Q8_0'):.1f} / {size_gb(transformer, 'bf16'):.1f} GB"
        cells = [label, sizes, f"{size_gb(encoder, 'bf16'):.1f} GB", *(best(family, gpu) for gpu in GPUS)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
