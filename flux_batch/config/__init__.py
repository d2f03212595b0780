"""The config: schemas (registered in Hydra's ConfigStore), the typed config a run reads, and
the checks OmegaConf cannot express.

    schema.py  the sections, each field with its default, rule and fingerprint declaration
    fields.py  what a field declares (rule, pixels, read_by) and the Section base that checks
    checks.py  why a value is refused, shared with prompt rows' overrides (plan/prompts.py)
    load.py    the composed DictConfig to the typed config, once at the top of a run
"""

from flux_batch.config.checks import aspect_problem, guidance_problem, scheduler_problem, true_cfg_problem
from flux_batch.config.fields import Rule, plain, rule_of
from flux_batch.config.load import as_dict, load, output_layout, register_schemas
from flux_batch.config.schema import (
    CacheConfig,
    CacheMethod,
    DatasetConfig,
    Dequantize,
    DType,
    EngineConfig,
    FluxBatchConfig,
    ImageFormat,
    Layout,
    LoraConfig,
    ModelConfig,
    Offload,
    OutputConfig,
    QuantConfig,
    RuntimeConfig,
    SamplerConfig,
    Schedule,
)


def validate(cfg) -> None:
    """Refuse well-typed but unusable values, naming the key (the checks of `load`)."""
    load(cfg)


__all__ = [
    "CacheConfig",
    "CacheMethod",
    "DType",
    "DatasetConfig",
    "Dequantize",
    "EngineConfig",
    "FluxBatchConfig",
    "ImageFormat",
    "Layout",
    "LoraConfig",
    "ModelConfig",
    "Offload",
    "OutputConfig",
    "QuantConfig",
    "Rule",
    "RuntimeConfig",
    "SamplerConfig",
    "Schedule",
    "aspect_problem",
    "as_dict",
    "guidance_problem",
    "load",
    "output_layout",
    "plain",
    "register_schemas",
    "rule_of",
    "scheduler_problem",
    "true_cfg_problem",
    "validate",
]
