"""Step caching: reusing the transformer's work of earlier denoising steps (`cache=…`).

- `none`: every step runs every block.
- `fbcache`: First Block Cache, decided for each item. At each step the first double block
  runs for the whole batch; an item whose first-block residual changed by less than
  `threshold` (mean absolute change over the mean absolute residual at its last full step)
  skips the remaining blocks and reuses their residual from that step. The remaining blocks
  run on the items that need them only. diffusers' own `FirstBlockCacheConfig` takes one
  decision for the whole batch from one mean over it, so an item's pixels would depend on its
  batch neighbours; here they do not (at batch size 1 the two are the same computation).
- `taylorseer`: diffusers' TaylorSeer, lite variant: the transformer's output is computed in
  full for the first `warmup` steps and then every `interval` steps, and predicted in between
  by a Taylor expansion of `order` over the full steps (the blocks are skipped). Which steps
  are predicted depends on the step index only, never on the data or the batch.

The state lives in diffusers' hooks on the transformer and is reset before every batch
(`reset`): a batch never sees another batch's state. Hooks stay installed on a pipeline kept
for the next job of a sweep and are replaced when that job asks for another setting.
"""

from __future__ import annotations

from typing import Any

# The options are the config's `cache` section (config.CacheConfig): `method` and the knobs
# each method reads, checked when the config is built.


def apply(transformer, options: Any) -> None:
    """Install the hooks of `options` (a config.CacheConfig) on the transformer, replacing
    another setting's."""
    if getattr(transformer, "_flux_batch_cache", None) == options:
        return
    remove(transformer)
    if options.method == "fbcache":
        from flux_batch.render import item_fbcache

        item_fbcache.apply(transformer, options.threshold)
    elif options.method == "taylorseer":
        import torch
        from diffusers import TaylorSeerCacheConfig

        # factors in float32: bfloat16 (diffusers' default) costs accuracy for little memory,
        # since the lite variant keeps the transformer's output only
        transformer.enable_cache(
            TaylorSeerCacheConfig(
                cache_interval=options.interval,
                disable_cache_before_step=options.warmup,
                max_order=options.order,
                taylor_factors_dtype=torch.float32,
                use_lite_mode=True,
            )
        )
    transformer._flux_batch_cache = options


def remove(transformer) -> None:
    """Back to no caching."""
    current = getattr(transformer, "_flux_batch_cache", None)
    if current is None or current.method == "none":
        pass
    elif current.method == "taylorseer":
        transformer.disable_cache()
    else:
        from flux_batch.render import item_fbcache

        item_fbcache.remove(transformer)
    transformer._flux_batch_cache = None


def reset(transformer) -> None:
    """Forget every earlier step: called before each batch."""
    options = getattr(transformer, "_flux_batch_cache", None)
    if options is not None and options.method != "none":
        transformer._reset_stateful_cache()


def skipped_share(transformer) -> float | None:
    """fbcache: the share of item-steps that skipped the remaining blocks, since `apply`."""
    counts = getattr(transformer, "_flux_batch_fbcache_counts", None)
    return counts[1] / counts[0] if counts and counts[0] else None
