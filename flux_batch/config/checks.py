"""Why a value is refused: the checks the fields' rules name (config/schema.py).

Each returns the reason, or None. The config puts `key=value: ` in front of it; a prompt row
that overrides the setting (plan/prompts.py) puts its own `name=value ` in front.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from flux_batch.plan.sizes import parse_aspect
from flux_batch.samplers import SCHEDULERS

DATASET_FORMATS = ("auto", "jsonl", "csv", "tsv", "txt", "parquet", "arrow")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def finite_problem(value: Any) -> str | None:
    return None if _is_number(value) and math.isfinite(value) else "must be a finite number"


def guidance_problem(value: Any) -> str | None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        return "must be a finite number >= 0"
    return None


def true_cfg_problem(value: Any) -> str | None:
    problem = guidance_problem(value)
    if problem is None and value < 1:
        return "must be >= 1 (1 turns true CFG off)"
    return problem


def positive_problem(value: Any) -> str | None:
    return None if _is_number(value) and math.isfinite(value) and value > 0 else "must be a number > 0"


def shift_problem(value: Any) -> str | None:
    return None if positive_problem(value) is None else "must be a number > 0, or null for the model's"


def scheduler_problem(name: Any) -> str | None:
    return None if name in SCHEDULERS else f"expected one of {', '.join(SCHEDULERS)}"


def aspect_problem(text: Any) -> str | None:
    try:
        parse_aspect(str(text))
    except ValueError as e:
        return str(e)
    return None


def aspect_hint(text: Any) -> str:
    # YAML 1.1 reads an unquoted 16:9 as the number 969
    return '; in a YAML file, quote it (aspect: "16:9")' if str(text).isdigit() else ""


def batch_size_problem(value: Any) -> str | None:
    if value == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return "must be an integer >= 1, or auto"
    return None


def quality_problem(value: Any) -> str | None:
    return None if 1 <= value <= 100 else "must be between 1 and 100"


def dataset_format_problem(value: Any) -> str | None:
    return None if value in DATASET_FORMATS else f"expected one of {', '.join(DATASET_FORMATS)}"


def device_problem(value: Any) -> str | None:
    return None if _DEVICE.match(value) else "expected auto, cpu, cuda, cuda:N or mps"


def offload_problem(value: Any) -> str | None:
    if value == "sequential":
        return (
            "diffusers' sequential CPU offload does not work with GGUF-quantized transformers "
            "(it fails with KeyError: None); use runtime.offload=model"
        )
    return None


def folder_problem(value: Any) -> str | None:
    path = os.path.expanduser(value)
    return "not a folder" if value and os.path.exists(path) and not os.path.isdir(path) else None


def ray_address_problem(value: Any) -> str | None:
    if value is None or value == "auto":
        return None
    host, _, port = str(value).removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be null (a Ray inside this process), auto, or host:port of the cluster's head"
    return None


def workers_problem(value: Any) -> str | None:
    values = (
        list(value)
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str)
        else [value]
    )
    if len(values) not in (1, 2) or any(
        not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values
    ):
        return "must be an integer >= 1, or [min, max] for an autoscaling pool"
    if len(values) == 2 and values[0] > values[1]:
        return f"[min, max] with min {values[0]} above max {values[1]}"
    return None


def resources_problem(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return "must be a number >= 0"
    return None
