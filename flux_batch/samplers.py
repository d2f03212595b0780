"""The sampler choices: flow-matching Euler with diffusers' sigma schedules, and Heun.

`sampler.scheduler` picks one; `sampler.shift` (when set) replaces the model's
resolution-dependent shift with a fixed one. The FLUX pipelines hand the scheduler custom sigmas
and a shift `mu`, which diffusers' FlowMatchHeunDiscreteScheduler does not accept, so Heun
runs through a subclass whose set_timesteps does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Scheduler:
    heun: bool  # second order: two transformer calls per step
    sigmas: str | None  # diffusers' FlowMatchEuler sigma option (karras, exponential, beta)
    sampler_label: str  # infotext `Sampler:`
    schedule_label: str | None = None  # infotext `Schedule type:`


SCHEDULERS = {
    "euler": Scheduler(False, None, "Euler"),
    "heun": Scheduler(True, None, "Heun"),
    "euler_karras": Scheduler(False, "karras", "Euler", "Karras"),
    "euler_exponential": Scheduler(False, "exponential", "Euler", "Exponential"),
    "euler_beta": Scheduler(False, "beta", "Euler", "Beta"),
}


def infotext_sampler(name: str) -> str:
    """`Euler` or `Euler, Schedule type: Karras`, as other FLUX tools write it."""
    choice = SCHEDULERS[name]
    if choice.schedule_label is None:
        return choice.sampler_label
    return f"{choice.sampler_label}, Schedule type: {choice.schedule_label}"


def make_scheduler(base_config, name: str, shift: float | None):
    """A fresh scheduler for `name`, built from the pipeline's own scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    choice = SCHEDULERS[name]
    overrides = {} if shift is None else {"shift": float(shift), "use_dynamic_shifting": False}
    if choice.heun:
        return flux_heun_class().from_config(base_config, **overrides)
    sigma_flags = {f"use_{kind}_sigmas": choice.sigmas == kind for kind in ("karras", "exponential", "beta")}
    return FlowMatchEulerDiscreteScheduler.from_config(base_config, **overrides, **sigma_flags)


_HEUN_CLASS = None


def flux_heun_class():
    """FlowMatchHeunDiscreteScheduler with the dynamic shift the FLUX pipelines ask for (built on
    first use, so importing this module does not import diffusers)."""
    global _HEUN_CLASS
    if _HEUN_CLASS is None:
        _HEUN_CLASS = _define_flux_heun()
    return _HEUN_CLASS


def _define_flux_heun():
    import numpy as np
    import torch
    from diffusers import FlowMatchHeunDiscreteScheduler
    from diffusers.configuration_utils import register_to_config

    class FluxFlowMatchHeunScheduler(FlowMatchHeunDiscreteScheduler):
        @register_to_config
        def __init__(
            self,
            num_train_timesteps: int = 1000,
            shift: float = 1.0,
            use_dynamic_shifting: bool = False,
            base_shift: float = 0.5,
            max_shift: float = 1.15,
            base_image_seq_len: int = 256,
            max_image_seq_len: int = 4096,
        ):
            super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)

        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
            if sigmas is None:
                sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
            sigmas = np.asarray(sigmas, dtype=np.float64)
            if self.config.use_dynamic_shifting:  # FLUX's resolution-dependent shift
                sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
            else:
                shift = self.config.shift
                sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
            sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
            self.num_inference_steps = len(sigmas)
            # each step after the first evaluates the model twice: at t and (corrector) at t
            timesteps = sigmas * self.config.num_train_timesteps
            self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
            sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])
            self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
            self.prev_derivative = None
            self.dt = None
            self._step_index = None  # a scheduler object is reused across pipeline calls
            self._begin_index = None

    return FluxFlowMatchHeunScheduler
