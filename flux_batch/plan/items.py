"""Items: one per (row, k). Ids and seeds exactly as DESIGN.md's contract says.

An item's seed depends only on the base seed, its id and k, so its starting noise never
depends on batching, order, limit, resume, ranks, job slices or device.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Iterator

from flux_batch.errors import PromptFileError
from flux_batch.plan.prompts import Row
from flux_batch.plan.sizes import size_for, size_of_ratio

AUTO_ID = re.compile(r"([0-9a-f]{12})(?:-([0-9]+))?")  # what prompt_id makes, and its repeats


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


class Plan:
    """The items of a prompt source, checked whole (ids, duplicates, row settings) in one pass
    that keeps 8 bytes per row, then made lazily: `items(skip)` and `keys()` read the rows
    again and make Items, seeds included, only for the keys not skipped. `rows` is a list of
    Rows or a function that reads them anew each time (a Parquet file of millions of rows is
    never held in memory)."""

    def __init__(
        self,
        rows: Iterable[Row] | Callable[[], Iterable[Row]],
        path: str,
        defaults: Settings | RowDefaults,
        base_seed: int,
        num_images: int,
        limit: int | None = None,
    ):
        if isinstance(defaults, Settings):
            defaults = RowDefaults(defaults)
        if not callable(rows):
            rows = _replay(list(rows))
        self._read = rows
        self.path = path
        self.defaults = defaults
        self.base_seed = base_seed
        self.num_images = num_images
        self.limit = limit
        self.digest: str | None = None  # set by the driver: what plan/known.py keeps it under
        self.total = 0  # planned items
        self.has_inputs = False  # whether a planned row has input images
        self.columns: set[str] = set()  # the carried columns of every row
        self._named: dict[str, Row] = {}  # rows with an explicit id and inputs
        self._settings: dict[tuple, tuple[Settings, str | None] | str] = {}  # by _settings_key
        self._repeated: set[int] = set()  # auto-id bases of more than one row
        self._groups: Counter[Settings] = Counter()  # planned items by settings
        self._check()

    def _check(self) -> None:
        """Read every row once: count the planned items, check each row's settings and that
        no two rows share an id. Keeps 8 bytes per row (the ids' hashes) and the rows' distinct
        settings, not the rows."""
        bases, named, lookalikes, problems = array("q"), array("q"), [], []
        left = self.limit
        for row in self._read():
            if row.id is None:
                bases.append(int(prompt_id(row.prompt, row.inputs), 16))
            else:
                named.append(hash(row.id))
                if AUTO_ID.fullmatch(row.id):
                    lookalikes.append(row.id)
                if row.inputs:
                    self._named[row.id] = row
            if isinstance(result := self._row_settings(row), str):
                problems.append(f"{self.path}:{row.line}: {result}")
            self.columns.update(row.extra)
            if left is None or left > 0:
                n = self._count(row)
                planned = n if left is None else min(n, left)
                left = None if left is None else left - n
                self.total += planned
                self.has_inputs = self.has_inputs or bool(row.inputs)
                if not isinstance(result, str):
                    self._groups[result[0]] += planned
        self._find_duplicates(bases, named, lookalikes)
        if problems:
            raise PromptFileError(problems)

    def _find_duplicates(self, bases: array, named: array, lookalikes: list[str]) -> None:
        """PromptFileError naming each repeated id. Hashes find the suspects; a second read
        of the rows confirms them and finds their lines, only when there are any."""
        auto = Tally(bases)
        self._repeated = auto.repeated
        suspects = Tally(named).repeated
        for item_id in lookalikes:  # an explicit id that an auto id may also be
            base, n = AUTO_ID.fullmatch(item_id).groups()
            if auto.count(int(base, 16)) >= int(n or 1):
                suspects.add(hash(item_id))
        if not suspects:
            return
        first_line: dict[str, int] = {}
        problems = []
        for row, item_id in self._ids():
            if hash(item_id) not in suspects:
                continue
            if item_id in first_line:
                problems.append(
                    f"{self.path}:{row.line}: duplicate id {item_id!r} (first on line {first_line[item_id]})"
                )
            else:
                first_line[item_id] = row.line
        if problems:
            raise PromptFileError(problems)

    def _ids(self) -> Iterator[tuple[Row, str]]:
        """Every row with its id: explicit ids as given; others from the prompt's hash, `-2`,
        `-3`... for repeats."""
        seen: dict[int, int] = {}
        for row in self._read():
            if row.id is not None:
                yield row, row.id
                continue
            base = prompt_id(row.prompt, row.inputs)
            if (value := int(base, 16)) in self._repeated:
                seen[value] = n = seen.get(value, 0) + 1
                if n > 1:
                    yield row, f"{base}-{n}"
                    continue
            yield row, base

    def _planned(self) -> Iterator[tuple[Row, str, tuple[Settings, str | None], int, int, int]]:
        """(row, id, (settings, negative prompt), the row's num_images, how many of them are
        planned, its first item's place) of each planned row: rows count whole, even where
        the limit cuts one."""
        left, offset = self.limit, 0
        for row, item_id in self._ids():
            if left is not None and left <= 0:
                return
            n = self._count(row)
            planned = n if left is None else min(n, left)
            left = None if left is None else left - n
            yield row, item_id, self._settings[self._settings_key(row)], n, planned, offset
            offset += n

    def _count(self, row: Row) -> int:
        return row.overrides.get("num_images", self.num_images) if row.overrides else self.num_images

    @staticmethod
    def _settings_key(row: Row) -> tuple:
        # most rows of a long file have no overrides: they share one result
        key = tuple(sorted(row.overrides.items())) if row.overrides else ()
        if row.inputs:  # their count and the first one's shape set the size
            key += (len(row.inputs), row.inputs[0].width, row.inputs[0].height)
        return key

    def _row_settings(self, row: Row) -> tuple[Settings, str | None] | str:
        """The row's settings and negative prompt, or why they contradict."""
        key = self._settings_key(row)
        if key not in self._settings:
            try:
                self._settings[key] = row_settings(row, self.defaults)
            except ValueError as e:
                self._settings[key] = str(e)
        return self._settings[key]

    def named_inputs(self) -> dict[str, Row]:
        """The rows with both an explicit id and inputs, by id: their records must still show
        the inputs' hashes for their items to count as done (an auto id changes with them)."""
        return dict(self._named)

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
        if not any(column.lower() in names for column in self.columns):
            return
        raise PromptFileError(
            [
                f"{self.path}:{row.line}: column {column!r} would overwrite the manifest field "
                f"of that name that {why} adds"
                for row in self._read()
                for column in row.extra
                if column.lower() in names
            ]
        )

    def keys(self) -> Iterator[tuple[str, int]]:
        """(id, k) of every planned item, in plan order."""
        for _, item_id, _, _, planned, _ in self._planned():
            for k in range(planned):
                yield item_id, k

    def items(self, skip: Container[tuple[str, int]] = ()) -> Iterator[Item]:
        """The planned items in plan order, less those whose (id, k) is in `skip`."""
        for row, item_id, (settings, negative), n, planned, offset in self._planned():
            for k in range(planned):
                if (item_id, k) in skip:
                    continue
                o = row.overrides
                seed = o["seed"] + k if "seed" in o else item_seed(self.base_seed, item_id, k)
                stem = item_id if n == 1 else f"{item_id}_{k}"
                yield Item(
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

    def pending(self, skip: Container[tuple[str, int]] = ()) -> "Pending":
        """The items not in `skip`, counted now (without reading the rows again when nothing
        is skipped: a fresh run) and made as they are iterated."""
        if not skip:
            return Pending(self.items, self._groups)
        groups: Counter[Settings] = Counter()
        for _, item_id, (settings, _), _, planned, _ in self._planned():
            for k in range(planned):
                if (item_id, k) not in skip:
                    groups[settings] += 1
        return Pending(lambda: self.items(skip), groups)


class Pending:
    """Items still to render, in plan order: their count by settings (what sizes the batches
    and the progress bar), and the items themselves, made again each time they are iterated,
    so a run of millions of items never holds them all."""

    def __init__(self, make: Callable[[], Iterable[Item]], groups: Counter):
        self._make = make
        self.groups = groups  # Settings -> how many items have them

    @classmethod
    def of(cls, items: list[Item]) -> "Pending":
        return cls(lambda: iter(items), Counter(item.settings for item in items))

    def span(self) -> tuple[str | None, str | None]:
        """The first and last item's id (a pass over them)."""
        first = last = None
        for item in self:
            first, last = first or item.id, item.id
        return first, last

    def __iter__(self) -> Iterator[Item]:
        return iter(self._make())

    def __len__(self) -> int:
        return sum(self.groups.values())

    @property
    def steps(self) -> int:
        """Denoising steps of all the items."""
        return sum(settings.steps * count for settings, count in self.groups.items())


class Tally:
    """How often each value of an array of int64 occurs: a Counter for a small array, a sorted
    numpy copy for a large one (a Counter of 10 million values would take 1 GB; numpy is not
    imported at all for the small plans of most runs)."""

    SMALL = 100_000

    def __init__(self, values: array):
        if len(values) <= self.SMALL:
            counter = Counter(values)
            self.repeated = {value for value, count in counter.items() if count > 1}
            self.count = lambda value: counter.get(value, 0)
            return
        import numpy as np

        unique, counts = np.unique(np.frombuffer(values, dtype=np.int64), return_counts=True)
        self.repeated = set(unique[counts > 1].tolist())

        def count(value: int) -> int:
            at = int(np.searchsorted(unique, value))
            return int(counts[at]) if at < len(unique) and unique[at] == value else 0

        self.count = count


def _replay(rows: list[Row]) -> Callable[[], Iterator[Row]]:
    return lambda: iter(rows)


def expand(
    rows: list[Row], path: str, defaults: Settings | RowDefaults, base_seed: int, num_images: int
) -> list[Item]:
    """All items of a prompt file, in file order."""
    return list(Plan(rows, path, defaults, base_seed, num_images).items())


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
