"""What a config field declares about itself, in its dataclass metadata.

- `rule`: which values it accepts: checked when the config is built (`Section`) and, for the
  settings a prompt row may override, on each row (plan/prompts.py), so both refuse alike.
- `pixels`: how it enters the run fingerprint (fingerprint.pixel_settings); a field without
  it does not change pixels.
- `read_by`: the methods (or layouts) of its section that read it; the others ignore it, and
  a value set for them draws a warning (load.unread_settings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, Iterator

from omegaconf import MISSING, OmegaConf

from flux_batch.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """The values a field accepts. None passes for an optional field (null is its default)."""

    minimum: int | None = None  # an integer >= minimum
    multiple: int | None = None  # a positive multiple of this (image sides)
    problem: Callable[[Any], str | None] | None = None  # why a value is refused, or None
    hint: Callable[[Any], str] | None = None  # the config's extra advice after the problem
    if_read: bool = False  # checked only when its section's chosen method reads it

    def config_problem(self, value: Any) -> str | None:
        """Why the config refuses `value`, or None (the rows word the bounds their own way)."""
        if self.multiple is not None:
            if not isinstance(value, int) or value <= 0 or value % self.multiple:
                return f"image sizes must be positive multiples of {self.multiple}"
        elif self.minimum is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < self.minimum:
                return f"must be an integer >= {self.minimum}"
        problem = self.problem(value) if self.problem is not None else None
        if problem is not None and self.hint is not None:
            problem += self.hint(value)
        return problem


@dataclass(frozen=True)
class Pixels:
    """How a field enters the run fingerprint. `value` and `when` take the whole section."""

    key: str | None = None  # its name in the settings; default: the field's
    group: str | None = None  # the settings group it joins: default its section's; "" the top level
    value: Callable[[Any], Any] | None = None  # what enters; default: the field's value
    when: Callable[[Any], bool] | None = None  # whether it enters; default: always
    spread: bool = False  # `value` is a dict whose items join the group


def pixels(**how: Any) -> Pixels:
    return Pixels(**how)


def setting(
    default: Any = MISSING,
    *,
    rule: Rule | None = None,
    pixels: Pixels | None = None,
    read_by: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its declarations (see the module's docstring)."""
    metadata = {"rule": rule, "pixels": pixels, "read_by": read_by}
    return field(default=default, metadata=metadata)


def rule_of(section: type, name: str) -> Rule:
    """The rule field `name` of a section class declares."""
    return next(f.metadata["rule"] for f in dataclasses.fields(section) if f.name == name)


def plain(value: Any) -> Any:
    """An enum-typed setting as its string (OmegaConf hands back Enum members)."""
    return value.value if isinstance(value, Enum) else value


def schema_of(section: Any) -> type:
    """The schema class of a section: a Section, or Hydra's DictConfig of one."""
    return type(section) if dataclasses.is_dataclass(section) else OmegaConf.get_type(section)


def is_read(section: Any, f: dataclasses.Field) -> bool:
    """Whether the section's chosen method (layout) reads field `f`; True for a field every
    method reads."""
    readers = f.metadata.get("read_by")
    return not readers or plain(getattr(section, schema_of(section).CHOOSER)) in readers


class Section:
    """A config section: checked by its fields' rules (and `check`) when built, read-only after.

    OmegaConf.to_object builds each section by calling its class, so __post_init__ checks it.
    Read-only by refusing assignments after __post_init__ rather than `frozen=True`: OmegaConf
    marks the nodes of frozen dataclasses read-only, and Hydra could then not merge into them.
    """

    KEY: ClassVar[str | None] = None  # its key in the config: "sampler"; None: checked by its owner
    CHOOSER: ClassVar[str | None] = None  # the field choosing which knobs are read: "method"

    def __post_init__(self) -> None:
        # OmegaConf builds one instance of each default_factory while composing, with
        # MISSING values: a schema's prototype, not a config, so nothing to check
        if self.KEY is not None and not _is_prototype(self):
            check_rules(self, f"{self.KEY}." if self.KEY else "")
            self.check()
        object.__setattr__(self, "_built", True)

    def check(self) -> None:
        """Checks across fields; ConfigError names the key."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_built", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)


def check_rules(section: Any, prefix: str) -> None:
    """Each field's rule on its value, in field order; the first refused raises ConfigError."""
    for f in dataclasses.fields(section):
        rule, value = f.metadata.get("rule"), getattr(section, f.name)
        if rule is None or value is None or (rule.if_read and not is_read(section, f)):
            continue
        if (problem := rule.config_problem(value)) is not None:
            raise ConfigError(f"{prefix}{f.name}={plain(value)}: {problem}")


def _is_prototype(section: Any) -> bool:
    return any(getattr(section, f.name) == MISSING for f in dataclasses.fields(section))


def pixel_entries(section: Any, group: str) -> Iterator[tuple[str, str, Any, bool]]:
    """(group, key, value, spread) of each field of `section` that enters the fingerprint."""
    for f in dataclasses.fields(schema_of(section)):
        how: Pixels | None = f.metadata.get("pixels")
        if how is None or not is_read(section, f) or (how.when is not None and not how.when(section)):
            continue
        value = how.value(section) if how.value is not None else plain(getattr(section, f.name))
        yield (group if how.group is None else how.group), how.key or f.name, value, how.spread
