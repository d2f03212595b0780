"""Dequantizing a GGUF transformer once, when memory allows (`runtime.dequantize`).

diffusers' `GGUFLinear` keeps each weight packed and dequantizes it at every forward pass: on
an H100 that makes Q8_0 25% slower than bf16, and on this CPU 1.7x float32 at batch size 1.
`once` replaces each packed weight by `dequantize_gguf_tensor(weight).to(compute_dtype)` and
the bias by its compute-dtype copy, the very tensors the native forward builds at each call,
and makes the layer a plain `nn.Linear` (whose forward is the same `F.linear`): the products,
and so the pixels, are those of `never`. The cost is memory: the weights at compute dtype
instead of packed (Q8_0 to bf16: about twice; to float32: about four times).

`once` refuses in one line, before dequantizing, when that does not fit (ConfigError).
`auto` dequantizes when that fits with a margin: in the GPU's free memory, or on a CPU in the
available RAM (and what a container's cgroup memory limit leaves), and never under model
offload (the weights would cross the bus larger).
"""

from __future__ import annotations

import logging
import os

from flux_batch import faults
from flux_batch.errors import ConfigError

log = logging.getLogger("flux_batch.model")

MARGIN = 1.2  # the added bytes times this, plus RESERVE, must fit
RESERVE = 2 * 2**30  # activations, the other components' working memory


def gguf_layers(model) -> list:
    """The layers whose own weight is still packed (diffusers' GGUFParameter); a LoRA wrapper,
    which only shows its base layer's weight, is not one."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    return [m for m in model.modules() if isinstance(m._parameters.get("weight"), GGUFParameter)]


def added_bytes(model) -> int:
    """How much more memory the dequantized weights take than the packed ones."""
    total = 0
    for layer in gguf_layers(model):
        unpacked = layer.in_features * layer.out_features * _itemsize(layer.compute_dtype)
        total += unpacked - layer.weight.numel() * layer.weight.element_size()
    return total


def wanted(mode: str, model, device: str, offloaded: bool) -> bool:
    """Whether to dequantize: `never` never, `auto` when it fits, `once` when it fits and
    otherwise ConfigError (asked for, it must not exhaust the memory halfway through)."""
    if mode != "auto":
        if mode == "once" and not offloaded and gguf_layers(model):
            _check_fits(model, device)  # where auto would look (under offload it never does)
        return mode == "once"
    if offloaded or not gguf_layers(model):
        return False
    need = added_bytes(model) * MARGIN + RESERVE
    free = _free_memory(device)
    log.info(
        "runtime.dequantize=auto: %.2f GiB more needed, %.2f GiB free: %s",
        need / 2**30,
        free / 2**30,
        "dequantizing once" if need < free else "dequantizing at every step",
    )
    return need < free


def _check_fits(model, device: str) -> None:
    need = int(added_bytes(model) * MARGIN + RESERVE)
    free = _free_memory(device)
    if need >= free:
        raise ConfigError(
            f"runtime.dequantize=once: the dequantized weights need {need} bytes more "
            f"({need / 2**30:.2f} GiB, margin included) but {free} bytes ({free / 2**30:.2f} GiB) "
            f"are free on {device}; use runtime.dequantize=auto (dequantizes only when it fits) "
            "or never"
        )


def dequantize(model) -> int:
    """Replace every packed weight by its dequantized tensor at the layer's compute dtype; the
    number of layers changed."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    layers = gguf_layers(model)
    for layer in layers:
        dtype = layer.compute_dtype
        with torch.no_grad():
            weight = dequantize_gguf_tensor(layer.weight).to(dtype)
            layer.weight = torch.nn.Parameter(weight.contiguous(), requires_grad=False)
            if layer.bias is not None:
                layer.bias = torch.nn.Parameter(layer.bias.to(dtype), requires_grad=False)
        layer.__class__ = torch.nn.Linear  # GGUFLinear's forward, less the per-call dequantize
    return len(layers)


def _itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _free_memory(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return faults.free_memory(torch.cuda.mem_get_info(torch.device(device))[0])
    return faults.free_memory(min(_available_ram(), _cgroup_room()))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _cgroup_room(files=CGROUP_FILES) -> int:
    """What a container's memory limit leaves (MemAvailable counts the whole host's memory)."""
    for limit_file, usage_file in files:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            return max(int(limit) - usage, 0)
    return 2**62  # no limit found
