"""Prompt templates (`dataset.template`): the rows of the combinations of the slots' values,
planned as a prompt file's rows are (ids, seeds, resume, limit, num_images unchanged).

    template  "a {style} photo of a {object}, {red|green}"   {{ and }} are literal braces
    slots     style: [watercolour, oil]   object: objects.txt (one value per line)

`{red|green}` is an anonymous slot, named by its place among the template's alternatives
(`_1`, `_2`, ...). Slots are ordered as the template first names them.

- product: every combination; the first slot varies slowest, each slot's values in the order
  given.
- sample: `count` distinct combinations chosen by the run's seed: the `count` whose hash of
  the seed, the template and their values is smallest, in that order. The choice depends on
  the values, never on their order or on limit, resume or ranks; a larger count keeps a
  smaller one's items first.

An item's id is made of its values, never of its place (see `combination_id`): a value added to
a slot keeps every earlier item's id, so a rerun renders only the new combinations. Each slot's
value is a column of the item's record, its label.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from flux_batch import record as record_fields
from flux_batch.config import plain
from flux_batch.errors import ConfigError
from flux_batch.plan.prompts import (
    CONTROL,
    CONTROL_RULE,
    FLOAT_OVERRIDES,
    INT_OVERRIDES,
    MAX_CARRIED_COLUMNS,
    MAX_PROMPT_CHARS,
    TEXT_OVERRIDES,
    Row,
)

SOURCE = "dataset.template"  # what a row's problems are reported against
# A template's combinations are built (product) or hashed (sample) in full at each parse:
# bounded so that a typo in a slot file cannot start a plan of billions.
MAX_COMBINATIONS = 1_000_000
# `{{`, `}}`, a `{...}` without braces inside, or a lone brace (refused)
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_READABLE = 48  # characters of the values in an id, before its hash
# Row settings a slot's column would set, and the prompt and image columns: never a label.
_RESERVED = {*record_fields.FIELDS, *INT_OVERRIDES, *FLOAT_OVERRIDES, *TEXT_OVERRIDES, "true_cfg", "image"}


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[tuple[bool, str], ...]  # (is a slot, its name | literal text), in order
    names: tuple[str, ...]  # the slots, in the order the template first names them
    alternatives: dict[str, tuple[str, ...]]  # the anonymous slots' values


def parse(text: str) -> Template:
    """The template's literal text and slots, or ConfigError naming what is wrong."""
    if not text.strip():
        raise ConfigError(f"{SOURCE}: empty; write a prompt with {{slot}}s, e.g. 'a {{colour}} {{shape}}'")
    _check_text(SOURCE, text)
    parts: list[tuple[bool, str]] = []
    alternatives: dict[str, tuple[str, ...]] = {}
    names: list[str] = []
    at = 0
    for match in _TOKEN.finditer(text):
        parts.append((False, text[at : match.start()]))
        at = match.end()
        token, inside = match.group(), match.group(1)
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
            continue
        if inside is None:
            raise ConfigError(
                f"{SOURCE}: unmatched {token!r} at character {match.start() + 1}; write {token * 2} "
                "for a literal brace"
            )
        name = _slot(inside, alternatives, match.start())
        parts.append((True, name))
        names.extend([name] if name not in names else [])
    parts.append((False, text[at:]))
    if not names:
        raise ConfigError(
            f"{SOURCE}={text!r}: names no {{slot}} and no {{a|b}} alternatives, so it makes one "
            "prompt; a prompt file (dataset.path) renders fixed prompts"
        )
    return Template(text, tuple(p for p in parts if p[0] or p[1]), tuple(names), alternatives)


def _slot(inside: str, alternatives: dict[str, tuple[str, ...]], start: int) -> str:
    """The name of the slot `{inside}`: its own, or `_N` for the N-th `{a|b}` alternatives."""
    if "|" in inside:
        name = f"_{len(alternatives) + 1}"
        values = tuple(inside.split("|"))
        _check_distinct(f"{SOURCE}: {{{inside}}}", values)
        alternatives[name] = values
        return name
    if not inside.isidentifier() or inside.startswith("_"):
        raise ConfigError(
            f"{SOURCE}: {{{inside}}} at character {start + 1} is neither a slot name (a letter, "
            "then letters, digits or _) nor alternatives ({a|b})"
        )
    if inside.lower() in _RESERVED:
        raise ConfigError(
            f"{SOURCE}: slot {{{inside}}} would be the record's column {inside!r}, which flux-batch "
            "sets itself (a manifest field or a row setting); rename the slot"
        )
    return inside


@dataclass(frozen=True)
class TemplateRows:
    """A template with its slots' values read: what the plan's digest and rows come from."""

    template: Template
    values: dict[str, tuple[str, ...]]  # each slot's values, in the template's slot order
    mode: str
    count: int | None
    seed: int

    @property
    def combinations(self) -> int:
        return math.prod(len(v) for v in self.values.values())

    def shape(self) -> dict[str, Any]:
        """What the plan depends on besides the run's seed: the template, every slot's values (a
        file's as read), the mode, and a sample's count."""
        shape = {"template": self.template.text, "slots": {k: list(v) for k, v in self.values.items()}}
        return {**shape, "mode": self.mode, **({"count": self.count} if self.mode == "sample" else {})}

    def rows(self) -> list[Row]:
        """The rows in plan order: product order, or a sample's (smallest hash first)."""
        chosen = self._sample() if self.mode == "sample" else self._product()
        return [self._row(line, values) for line, values in enumerate(chosen, start=1)]

    def _product(self) -> Iterator[tuple[str, ...]]:
        return itertools.product(*self.values.values())

    def _sample(self) -> list[tuple[str, ...]]:
        seed = f"{self.seed}:".encode()

        def key(values: tuple[str, ...]) -> bytes:
            return hashlib.sha256(seed + _material(self.template.text, self._pairs(values))).digest()

        return heapq.nsmallest(self.count, self._product(), key=key)

    def _pairs(self, values: tuple[str, ...]) -> list[tuple[str, str]]:
        return sorted(zip(self.values, values))

    def _row(self, line: int, values: tuple[str, ...]) -> Row:
        by_name = dict(zip(self.values, values))
        prompt = "".join(by_name[text] if is_slot else text for is_slot, text in self.template.parts).strip()
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            labels = ", ".join(f"{k}={v!r}" for k, v in by_name.items())
            size = "empty" if not prompt else f"{len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
            raise ConfigError(f"{SOURCE}: the prompt of {labels} is {size}")
        item_id = combination_id(self.template.text, self.template.names, values)
        return Row(line, prompt, item_id, extra=by_name)


def _material(template: str, pairs: list[tuple[str, str]]) -> bytes:
    # NUL never occurs in a template, a name or a value (refused as a control character)
    return "\0".join([template, *(f"{name}\0{value}" for name, value in pairs)]).encode("utf-8")


def combination_id(template: str, names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """`<values>-<12 hex>`: the values in slot order as letters, digits and dashes, joined by
    `_` (at most 48 characters; left out when none remain), then 12 hex digits of the SHA-256
    of the template and the sorted (slot, value) pairs. Made of the values alone: the same
    combination keeps its id wherever it lands in the plan; another template gives other ids."""
    digest = hashlib.sha256(_material(template, sorted(zip(names, values)))).hexdigest()[:12]
    readable = _readable(values)
    return f"{readable}-{digest}" if readable else digest


def _readable(values: tuple[str, ...]) -> str:
    words = "_".join(re.sub(r"[^A-Za-z0-9]+", "-", v).strip("-") for v in values)
    return words[:_READABLE].strip("-_.")


def load(dataset: Any, seed: int) -> TemplateRows:
    """The template of `dataset` with its slots read (files relative to the current directory),
    checked whole, or ConfigError naming the key."""
    template = parse(dataset.template)
    given = dict(dataset.slots or {})
    named = [n for n in template.names if n not in template.alternatives]
    if missing := [n for n in named if n not in given]:
        shown = ", ".join(f"+dataset.slots.{n}=[...]" for n in missing)
        raise ConfigError(f"{SOURCE} names {{{missing[0]}}}, which dataset.slots does not give: add {shown}")
    if extra := [n for n in given if n not in named]:
        listed = ", ".join(f"{{{n}}}" for n in named) or "no named slot"
        raise ConfigError(f"dataset.slots.{extra[0]}: not named in {SOURCE} (which names {listed})")
    values = {n: template.alternatives.get(n) or _slot_values(n, given[n]) for n in template.names}
    mode = plain(dataset.mode)
    rows = TemplateRows(template, values, mode, dataset.count, seed)
    _check_size(rows)
    return rows


def _check_size(rows: TemplateRows) -> None:
    total = rows.combinations
    if len(rows.values) > MAX_CARRIED_COLUMNS:
        raise ConfigError(f"{SOURCE}: {len(rows.values)} slots; the limit is {MAX_CARRIED_COLUMNS}")
    if total > MAX_COMBINATIONS:
        raise ConfigError(
            f"{SOURCE}: its slots make {total:,} combinations; the limit is {MAX_COMBINATIONS:,} "
            "(split a slot's values over several runs)"
        )
    if rows.mode == "sample" and rows.count > total:
        raise ConfigError(
            f"dataset.count={rows.count}: the template makes only {total:,} combinations, and a sample "
            "draws each at most once; lower dataset.count, or use dataset.mode=product"
        )


def _slot_values(name: str, given: Any) -> tuple[str, ...]:
    key = f"dataset.slots.{name}"
    if isinstance(given, str):
        values = _read_file(key, given)
    elif isinstance(given, (list, tuple)):
        if not given:
            raise ConfigError(f"{key}: an empty list; a slot needs at least one value")
        values = tuple(_as_text(key, i, v) for i, v in enumerate(given))
        for i, value in enumerate(values):
            _check_text(f"{key}[{i}]", value)
    else:
        raise ConfigError(f"{key}: expected a list of values, e.g. [red,green], or a text file's path")
    _check_distinct(key, values)
    return values


def _as_text(key: str, index: int, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{key}[{index}]: expected a text or a number, got {value!r}")


def _read_file(key: str, path: str) -> tuple[str, ...]:
    """One value per line, stripped, blank lines skipped."""
    file = Path(path).expanduser()
    hint = "a slot is a list of values, e.g. [red,green], or a text file of one value per line"
    if not file.is_file():
        problem = "is a folder" if file.is_dir() else "no such file"
        raise ConfigError(f"{key}={path}: {problem} ({hint})")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}={path}: not valid UTF-8 (offset {e.start})") from None
    values = []
    for number, line in enumerate(text.split("\n"), start=1):
        value = line.strip()
        if value:
            _check_text(f"{path}:{number}", value)
            values.append(value)
    if not values:
        raise ConfigError(f"{key}={path}: no values (blank lines are skipped)")
    return tuple(values)


def _check_text(where: str, text: str) -> None:
    if (found := CONTROL.search(text)) is not None:
        raise ConfigError(
            f"{where}: holds U+{ord(found.group()):04X} at character {found.start() + 1}; {CONTROL_RULE}"
        )


def _check_distinct(where: str, values: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{where}: {value!r} is listed twice; each value makes one item")
        seen.add(value)
