"""Items: one per (row, k). Ids and seeds exactly as DESIGN.md's contract says.

An item's seed depends only on the base seed, its id and k, so its starting noise never
depends on batching, order, limit, resume, ranks, job slices or device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Container, Iterable

from flux_batch.errors import PromptFileError
from flux_batch.plan.prompts import Row
from flux_batch.plan.sizes import size_for, size_of_ratio


@dataclass(frozen=True)
class Settings:
    """The sampler settings of one item; items batch together only when these are equal.

    `true_cfg` is 1 for an item without a negative prompt, so such items never batch with
    (and never pay the second transformer pass of) items that have one.
    """

    width: int
    height: int
    steps: int
    guidance: float
    true_cfg: float = 1.0
    scheduler: str = "euler"
    references: int = 0  # input images per item, each fitted to width x height


@dataclass(frozen=True)
class RowDefaults:
    """What a row falls back to for the settings it does not set itself."""

    settings: Settings
    negative_prompt: str = ""
    area: float = 1024 * 1024  # pixels a row's own `aspect` is fitted to
    # the family guides by classifier-free guidance at guidance > 1, which takes the negative
    # prompt (Chroma, FLUX.2 [klein] base; Family.guided_negatives); else true CFG does
    guided_negatives: bool = False
    # a row with input images keeps its first input's aspect at `area` (unless it or
    # sampler.aspect sets the size)
    input_aspect: bool = True


@dataclass(frozen=True)
class Item:
    id: str
    k: int
    prompt: str
    seed: int
    settings: Settings
    file_stem: str  # <id> or <id>_<k>, the image's name without extension
    line: int = 0
    negative_prompt: str | None = None  # None: rendered without true CFG
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    index: int = 0  # its place among every item of the prompt file: the same whatever limit or resume
    inputs: tuple = field(default=(), compare=False, hash=False)  # plan/inputs.InputImage

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.k)


def prompt_id(prompt: str, inputs: tuple = ()) -> str:
    """12 hex digits of the prompt's SHA-256; with input images, of the prompt and each
    input's SHA-256, so an input whose bytes change is a new item."""
    text = prompt.strip()
    if inputs:
        text = "\0".join([text, *(i.sha256 for i in inputs)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def item_seed(base_seed: int, item_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{item_id}:{k}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def assign_ids(rows: Iterable[Row], path: str) -> list[str]:
    """Explicit ids as given; others from the prompt's hash, `-2`, `-3`... for repeats."""
    rows = list(rows)
    ids: list[str] = []
    seen_hash: dict[str, int] = {}
    for row in rows:
        if row.id is not None:
            ids.append(row.id)
            continue
        base = prompt_id(row.prompt, row.inputs)
        seen_hash[base] = seen_hash.get(base, 0) + 1
        n = seen_hash[base]
        ids.append(base if n == 1 else f"{base}-{n}")
    first_line: dict[str, int] = {}
    problems = []
    for row, item_id in zip(rows, ids):
        if item_id in first_line:
            problems.append(
                f"{path}:{row.line}: duplicate id {item_id!r} (first on line {first_line[item_id]})"
            )
        else:
            first_line[item_id] = row.line
    if problems:
        raise PromptFileError(problems)
    return ids


class Plan:
    """The items of a prompt file, checked whole (ids, duplicates, row settings) but built
    lazily: `items(skip=done)` makes Items, seeds included, only for the keys not skipped, so
    finding that a long finished run has nothing to do costs little more than reading it."""

    def __init__(
        self,
        rows: list[Row],
        path: str,
        defaults: Settings | RowDefaults,
        base_seed: int,
        num_images: int,
        limit: int | None = None,
    ):
        if isinstance(defaults, Settings):
            defaults = RowDefaults(defaults)
        self.base_seed = base_seed
        self.path = path
        self.digest: str | None = None  # set by the driver: what plan/known.py keeps it under
        ids = assign_ids(rows, path)
        settings = _all_row_settings(rows, path, defaults)
        # (row, id, (settings, negative prompt), the row's num_images, how many of them are planned)
        self._rows: list[tuple[Row, str, tuple[Settings, str | None], int, int]] = []
        left = limit
        for row, item_id, setting in zip(rows, ids, settings):
            n = row.overrides.get("num_images", num_images) if row.overrides else num_images
            if left is None:
                self._rows.append((row, item_id, setting, n, n))
                continue
            if left <= 0:
                break
            self._rows.append((row, item_id, setting, n, min(n, left)))
            left -= n
        self.total = sum(planned for *_, planned in self._rows)
        self.has_inputs = any(row.inputs for row, *_ in self._rows)

    def named_inputs(self) -> dict[str, Row]:
        """The rows with both an explicit id and inputs, by id: their records must still show
        the inputs' hashes for their items to count as done (an auto id changes with them)."""
        return {item_id: row for row, item_id, *_ in self._rows if row.inputs and row.id is not None}

    def check_inputs_unchanged(self, records) -> None:
        """PromptFileError naming each explicitly-id'd row whose input bytes differ from those
        its rendered records show: rendering it anew would overwrite them under the same id."""
        named = self.named_inputs()
        problems = []
        for record in records if named else ():
            row = named.pop(record.get("id"), None)
            if row is None or "inputs" not in record:
                continue
            for was, now in zip(record["inputs"], row.inputs):
                if was.get("sha256") != now.sha256:
                    problems.append(
                        f"{self.path}:{row.line}: input image {now.path!r} of id {row.id!r} changed "
                        f"since it was rendered (sha256 {str(was.get('sha256'))[:12]}... then, "
                        f"{now.sha256[:12]}... now); give the row a new id, or drop its id"
                    )
                    break
        if problems:
            raise PromptFileError(problems)

    def check_free_columns(self, names: tuple[str, ...], why: str) -> None:
        """PromptFileError naming each row with a column of one of `names`: fields the
        manifest records gain for `why` (e.g. a tar shard's `shard` and `key`)."""
        problems = [
            f"{self.path}:{row.line}: column {column!r} would overwrite the manifest field "
            f"of that name that {why} adds"
            for row, *_ in self._rows
            for column in row.extra
            if column.lower() in names
        ]
        if problems:
            raise PromptFileError(problems)

    def keys(self) -> list[tuple[str, int]]:
        """(id, k) of every planned item, in plan order."""
        return [(item_id, k) for _, item_id, _, _, planned in self._rows for k in range(planned)]

    def items(self, skip: Container[tuple[str, int]] = ()) -> list[Item]:
        """The planned items in file order, less those whose (id, k) is in `skip`."""
        items: list[Item] = []
        offset = 0  # the row's first item's place: rows count whole, even where limit cuts one
        for row, item_id, (settings, negative), n, planned in self._rows:
            for k in range(planned):
                if (item_id, k) in skip:
                    continue
                o = row.overrides
                seed = o["seed"] + k if "seed" in o else item_seed(self.base_seed, item_id, k)
                stem = item_id if n == 1 else f"{item_id}_{k}"
                items.append(
                    Item(
                        item_id,
                        k,
                        row.prompt,
                        seed,
                        settings,
                        stem,
                        row.line,
                        negative,
                        row.extra,
                        offset + k,
                        row.inputs,
                    )
                )
            offset += n
        return items


def expand(
    rows: list[Row], path: str, defaults: Settings | RowDefaults, base_seed: int, num_images: int
) -> list[Item]:
    """All items of a prompt file, in file order."""
    return Plan(rows, path, defaults, base_seed, num_images).items()


def _all_row_settings(rows: list[Row], path: str, defaults: RowDefaults) -> list[tuple[Settings, str | None]]:
    """Every row's settings, or PromptFileError naming each row whose settings contradict.
    Rows with the same overrides share one result: most rows of a long file have none."""
    found: dict[tuple, tuple[Settings, str | None] | str] = {}
    settings: list = []
    problems: list[str] = []
    for row in rows:
        key = tuple(sorted(row.overrides.items())) if row.overrides else ()
        if row.inputs:  # their count and the first one's shape set the size
            key += (len(row.inputs), row.inputs[0].width, row.inputs[0].height)
        if key not in found:
            try:
                found[key] = row_settings(row, defaults)
            except ValueError as e:
                found[key] = str(e)
        result = found[key]
        if isinstance(result, str):
            problems.append(f"{path}:{row.line}: {result}")
        settings.append(result)
    if problems:
        raise PromptFileError(problems)
    return settings


def row_settings(row: Row, defaults: RowDefaults) -> tuple[Settings, str | None]:
    """A row's settings and negative prompt, its own values over the run's."""
    o, d = row.overrides, defaults.settings
    width, height = o.get("width", d.width), o.get("height", d.height)
    if "aspect" in o:
        width, height = size_for(o["aspect"], defaults.area)
    elif row.inputs and defaults.input_aspect and "width" not in o and "height" not in o:
        first = row.inputs[0]
        width, height = size_of_ratio(first.width / first.height, defaults.area)
    true_cfg = float(o.get("true_cfg", d.true_cfg))
    negative = o.get("negative_prompt") or defaults.negative_prompt.strip() or None
    guidance = float(o.get("guidance", d.guidance))
    if defaults.guided_negatives:
        if "negative_prompt" in o and guidance <= 1:
            raise ValueError(
                "negative_prompt has no effect with guidance <= 1: this model's classifier-free "
                "guidance takes it above 1 (set sampler.guidance or the row's guidance)"
            )
        negative = negative if guidance > 1 else None
        true_cfg = 1.0
    elif "negative_prompt" in o and true_cfg <= 1:
        raise ValueError(
            "negative_prompt has no effect with true_cfg=1: set sampler.true_cfg "
            "(or the row's true_cfg) above 1 to render with it"
        )
    if "true_cfg" in o and true_cfg > 1 and negative is None:
        raise ValueError(f"true_cfg={true_cfg:g} has no effect without a negative_prompt")
    if true_cfg <= 1 and not defaults.guided_negatives:
        negative = None
    settings = Settings(
        width=width,
        height=height,
        steps=o.get("steps", d.steps),
        guidance=guidance,
        true_cfg=true_cfg if negative is not None and not defaults.guided_negatives else 1.0,
        scheduler=o.get("scheduler", d.scheduler),
        references=len(row.inputs),
    )
    return settings, negative
