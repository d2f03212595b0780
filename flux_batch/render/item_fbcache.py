"""First Block Cache decided for each item of a batch (`cache=fbcache`), as diffusers hooks.

At each step the first double block runs for the whole batch. For each item, the change of its
first-block residual since its last full step (mean absolute difference over the mean absolute
residual then, diffusers' measure) decides: above `threshold`, the item runs the remaining
blocks; below, it reuses their residual from that full step. The remaining blocks run on the
rows that need them only, so an item's decision and pixels never depend on its neighbours. At
batch size 1 this is diffusers' `FirstBlockCacheConfig`, operation for operation.

Imported only when the cache is used: it imports torch and diffusers.
"""

from __future__ import annotations

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager

HEAD_HOOK, BLOCK_HOOK = "flux_batch_fbcache_head", "flux_batch_fbcache_block"


def apply(transformer, threshold: float) -> None:
    """Hooks on the first double block (decides) and on every later block (runs or skips)."""
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    state = StateManager(ItemState)
    counts = transformer._flux_batch_fbcache_counts = [0, 0]  # item-steps, of them skipped
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(
        Head(state, threshold, counts), HEAD_HOOK
    )
    for i, block in enumerate(blocks[1:], start=2):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            Block(state, is_tail=i == len(blocks)), BLOCK_HOOK
        )
    # diffusers caches which blocks carry hooks when it first sets a cache context: a pipeline
    # that rendered before (a sweep's kept one) would never give these hooks their context
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def remove(transformer) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(HEAD_HOOK, recurse=True)
    registry.remove_hook(BLOCK_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()


class ItemState:
    """One per denoising context (cond / uncond); each tensor has one row per item."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.residual = None  # the first block's hidden-state residual at each item's last full step
        self.tail = None  # (encoder, hidden) residuals of the remaining blocks at that step
        self.head = None  # (encoder, hidden) output of the first block at this step
        self.compute = None  # (B,) bool: the items that run the remaining blocks at this step


class Head(ModelHook):
    _is_stateful = True  # diffusers sets the cache context and resets the state through it

    def __init__(self, state_manager: StateManager, threshold: float, counts: list[int]):
        super().__init__()
        self.state_manager = state_manager
        self.threshold = threshold
        self.counts = counts

    def new_forward(self, module, *args, **kwargs):
        encoder, hidden = self.fn_ref.original_forward(*args, **kwargs)
        state = self.state_manager.get_state()
        residual = hidden - kwargs["hidden_states"]
        compute = self._decide(state, residual)
        if state.residual is None:
            state.residual = residual
        else:  # a skipping item keeps comparing against its last full step, as diffusers does
            state.residual = torch.where(rows(compute, residual), residual, state.residual)
        state.compute, state.head = compute, (encoder, hidden)
        self.counts[0] += len(compute)
        self.counts[1] += int((~compute).sum())
        return encoder, hidden

    @torch.compiler.disable
    def _decide(self, state: ItemState, residual: torch.Tensor) -> torch.Tensor:
        if state.residual is None or state.tail is None:
            return torch.ones(residual.shape[0], dtype=torch.bool, device=residual.device)
        change = (residual - state.residual).abs().flatten(1).mean(1)
        return change / state.residual.abs().flatten(1).mean(1) > self.threshold

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class Block(ModelHook):
    def __init__(self, state_manager: StateManager, is_tail: bool):
        super().__init__()
        self.state_manager = state_manager
        self.is_tail = is_tail

    def new_forward(self, module, *args, **kwargs):
        state = self.state_manager.get_state()
        encoder, hidden = kwargs["encoder_hidden_states"], kwargs["hidden_states"]
        compute = state.compute
        if bool(compute.all()):
            encoder, hidden = self.fn_ref.original_forward(*args, **kwargs)
        elif bool(compute.any()):  # the items that need the block, as a smaller batch
            index = compute.nonzero().squeeze(1)
            part = {
                **kwargs,
                "hidden_states": hidden[index],
                "encoder_hidden_states": encoder[index],
                "temb": kwargs["temb"][index],
            }
            part_encoder, part_hidden = self.fn_ref.original_forward(*args, **part)
            encoder = encoder.index_copy(0, index, part_encoder)
            hidden = hidden.index_copy(0, index, part_hidden)
        # else every item skips: the first block's output passes through to the tail
        return self._tail(state, encoder, hidden) if self.is_tail else (encoder, hidden)

    @staticmethod
    def _tail(state: ItemState, encoder: torch.Tensor, hidden: torch.Tensor):
        head_encoder, head_hidden = state.head
        if state.tail is None:  # the first step, computed in full
            state.tail = (encoder - head_encoder, hidden - head_hidden)
            return encoder, hidden
        compute = state.compute
        state.tail = (
            torch.where(rows(compute, encoder), encoder - head_encoder, state.tail[0]),
            torch.where(rows(compute, hidden), hidden - head_hidden, state.tail[1]),
        )
        # an item that skipped: its first block's output plus the remaining blocks' residual
        return (
            torch.where(rows(compute, encoder), encoder, state.tail[0] + head_encoder),
            torch.where(rows(compute, hidden), hidden, state.tail[1] + head_hidden),
        )


def rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) mask shaped to broadcast over the rows of `like`."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
