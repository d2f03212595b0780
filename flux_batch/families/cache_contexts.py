"""Cache contexts for the transformer calls of a pipeline whose loop sets none (diffusers'
ChromaPipeline, FluxKontextPipeline and Flux2Pipeline): without one, diffusers' stateful cache
hooks (TaylorSeer, and our per-item First Block Cache) refuse to run, and under
classifier-free guidance the prompt's and the
negative prompt's calls would share one state.

FLUX.1's pipeline wraps its calls in `transformer.cache_context("cond")` and `("uncond")`; here a
forward pre-hook on the transformer does the same. The first call of a loop iteration is the
prompt's ("cond"), a second one in the same iteration the negative prompt's ("uncond"). The
iteration is told by the loop's own timestep object (`pipe._current_timestep`, a new tensor at
each iteration), not by its value, which a second-order sampler (Heun) repeats.
"""

from __future__ import annotations

import weakref


def install(pipe) -> None:
    """Hooks on `pipe.transformer` that set a cache context for each call and clear it after."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    transformer = pipe.transformer
    if getattr(transformer, "_flux_batch_cache_contexts", False):
        return
    owner = weakref.ref(pipe)  # the transformer keeps no pipeline alive
    last = [None]  # the timestep object of the previous call

    def before(module, args, kwargs):
        pipeline = owner()
        step = getattr(pipeline, "_current_timestep", None)
        name = "uncond" if step is not None and step is last[0] else "cond"
        last[0] = step
        _set_cache_context(module, CacheContext(name))

    def after(module, args, kwargs, output):
        _set_cache_context(module, None)

    transformer.register_forward_pre_hook(before, with_kwargs=True)
    transformer.register_forward_hook(after, with_kwargs=True)
    transformer._flux_batch_cache_contexts = True
