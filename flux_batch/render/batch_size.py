"""`batch_size=auto`: the largest batch that fits in free memory, smaller after out-of-memory.

The estimate is made once, before the first batch, from the model's shapes: the activations
of one item at the widest point of a transformer block (every token of image and text at the
hidden width, times the tensors alive there) or of the VAE decoder at full resolution,
whichever is larger (they never run at the same time). On CUDA the budget is the free memory
plus what torch holds cached, less the transformer's weights when model offload keeps them off
the GPU until denoising starts, less a margin for the per-layer dequantized GGUF weight and
allocator fragmentation. On a CPU the budget is half the available RAM and batches stop at 8:
beyond that a CPU gains nothing. An out-of-memory error halves the batch size for the failed
batch and every batch after it; at 1 the items fail as any other error would.

Batch size never changes an item's noise; it changes its kernels, so pixels follow the batch
size actually used (logged), within the tolerance DESIGN.md states across batch sizes.
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger(__name__)

MAX_CUDA = 16
MAX_CPU = 8
TRANSFORMER_TENSORS = 24  # token x hidden tensors alive at once in a block (qkv, MLP x4, norms)
VAE_TENSORS = 6  # full-resolution feature maps alive at once in the decoder's last stage
MARGIN_BYTES = 1 << 30


class BatchSizer:
    """The batch size of a run: fixed, or auto with out-of-memory fallback."""

    def __init__(self, size: int, auto: bool = False):
        self.size = size
        self.auto = auto

    def __call__(self) -> int:
        return self.size

    def shrink(self, failed: int) -> bool:
        """After an out-of-memory error on a batch of `failed` items: whether to retry it in
        smaller batches (auto only, and only while there is something to halve)."""
        if not self.auto or failed <= 1:
            return False
        self.size = max(1, min(self.size, failed) // 2)
        log.warning("out of memory with a batch of %d: batch_size=auto goes down to %d", failed, self.size)
        release_memory()
        return True


def for_run(setting, pipe, settings: list, max_sequence_length: int, device: str) -> BatchSizer:
    """The sizer for `batch_size` (an integer or "auto"); `settings` are the items' Settings."""
    if setting != "auto":
        return BatchSizer(int(setting))
    per_item = max(item_bytes(pipe, s, max_sequence_length) for s in set(settings))
    if device.startswith("cuda"):
        budget, cap, where = cuda_budget(pipe, device), MAX_CUDA, "free GPU memory"
    else:
        budget, cap, where = available_ram() // 2, MAX_CPU, "half the available RAM"
    size = max(1, min(cap, budget // per_item))
    log.info(
        "batch_size=auto: %d (%.1f GiB of %s, about %.2f GiB per item)",
        size,
        budget / 2**30,
        where,
        per_item / 2**30,
    )
    return BatchSizer(size, auto=True)


def item_bytes(pipe, s, max_sequence_length: int) -> int:
    """Estimated activation bytes of one item of Settings `s`."""
    dtype_bytes = pipe.vae.dtype.itemsize  # the compute dtype (GGUF weights are bytes)
    t = pipe.transformer.config
    hidden = t.num_attention_heads * t.attention_head_dim
    tokens = (s.width // 16) * (s.height // 16) + max_sequence_length
    transformer = tokens * hidden * dtype_bytes * TRANSFORMER_TENSORS
    channels = pipe.vae.config.block_out_channels[0]
    vae = s.width * s.height * channels * dtype_bytes * VAE_TENSORS
    return max(transformer, vae)


def cuda_budget(pipe, device: str) -> int:
    """Bytes a batch may use on the GPU once the transformer is resident."""
    import torch

    dev = torch.device(device)
    free, total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    transformer = pipe.transformer
    if next(transformer.parameters()).device.type != "cuda":  # model offload: not placed yet
        free -= sum(p.numel() * p.element_size() for p in transformer.parameters())
    margin = MARGIN_BYTES + total // 20 + 2 * largest_dequantized_layer(transformer, pipe.vae.dtype.itemsize)
    return max(0, free - margin)


def largest_dequantized_layer(module, itemsize: int) -> int:
    """Bytes of the largest linear weight in compute dtype: GGUF layers dequantize one whole
    weight per forward, on top of the activations."""
    import torch

    sizes = [m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return max(sizes, default=0) * itemsize


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
