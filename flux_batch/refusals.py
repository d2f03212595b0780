"""Hydra's refusals of a command line as one line naming the key: an unknown key, a value of
the wrong type or outside an enum, a config group option that does not exist, an override
that does not parse. Hydra prints these over four to ten lines; the CLI prints this line."""

from __future__ import annotations

import dataclasses
import re
import typing
from enum import Enum
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

_MERGING = re.compile(r"^Error merging override (.+)$")
_OVERRIDING = re.compile(r"^Could not override '([^']+)'")
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def refusal_line(error: BaseException, composing: bool) -> str | None:
    """The line for a refused command line, or None for any other error. `composing`: Hydra
    has not called the app yet, so an OmegaConf error is the config's, not a bug's."""
    if isinstance(error, MissingConfigException):
        return _missing_option(error)
    if isinstance(error, OverrideParseException):
        return (
            f"{error.override}: {_first_line(error.message)} (the override syntax: "
            "https://hydra.cc/docs/1.3/advanced/override_grammar/basic)"
        )
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) else error
    if isinstance(cause, OmegaConfBaseException) and (composing or cause is not error):
        return _omegaconf_line(str(error) if cause is not error else "", cause)
    if isinstance(error, ConfigCompositionException):
        return _first_line(str(error))
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _missing_option(error: MissingConfigException) -> str:
    missing = error.missing_cfg_file or ""
    group, _, name = missing.rpartition("/")
    options = [o for o in error.options or [] if not o.endswith("_schema")]
    if not group or not options:
        return _first_line(str(error))
    return f"{group}={name}: Could not find '{missing}'; the options are {', '.join(options)}"


def _omegaconf_line(hydra_message: str, cause: OmegaConfBaseException) -> str:
    key = getattr(cause, "full_key", None) or ""
    override = _OVERRIDING.match(hydra_message)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        if override and not key.startswith(override[1]):
            key = f"{override[1]}.{key}"  # a key inside a value (lora=[{…}]) is named from there
        return no_such_key(key, _field_names(cause.object_type))
    merging = _MERGING.match(_first_line(hydra_message))
    expected = _expected(cause.object_type, cause.key)
    if merging and expected:
        return f"{merging[1]}: expected {expected}"
    return f"{key}: {_first_line(str(cause.msg))}"


def no_such_key(key: str, known: list[str]) -> str:
    """`output.nokey: no such key; output has dir, format, …` (`known`: the owner's keys)."""
    owner = key.rpartition(".")[0] or "the config"
    return f"{key}: no such key" + (f"; {owner} has {', '.join(known)}" if known else "")


def _field_names(owner: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []


def _expected(owner: Any, key: Any) -> str | None:
    """What field `key` of the schema class `owner` takes, in words, or None."""
    try:
        hint = typing.get_type_hints(owner)[key]
    except Exception:  # not a schema class, or a list index
        return None
    optional = type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if isinstance(hint, type) and issubclass(hint, Enum):
        words = f"one of {', '.join(m.value for m in hint)}"
    elif hint in _TYPE_WORDS:
        words = _TYPE_WORDS[hint]
    else:
        return None
    return f"{words}, or null" if optional else words
