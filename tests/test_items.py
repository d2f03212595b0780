"""Ids, seeds and batching exactly as DESIGN.md's contract says."""

from __future__ import annotations

import hashlib

import pytest

from flux_batch.errors import PromptFileError
from flux_batch.plan.items import Plan, Settings, Tally, expand
from flux_batch.plan.prompts import Row
from flux_batch.render.renderer import batches

DEFAULTS = Settings(64, 64, 4, 3.5)


def contract_seed(base: int, item_id: str, k: int) -> int:
    # Written out from DESIGN.md, independently of flux_batch.plan.items
    return int.from_bytes(hashlib.sha256(f"{base}:{item_id}:{k}".encode()).digest()[:8], "big") >> 1


def rows(*specs) -> list[Row]:
    return [Row(line=i + 1, prompt=p, id=i_d, overrides=o) for i, (p, i_d, o) in enumerate(specs)]


def test_hash_ids_and_repeats_in_file_order():
    items = expand(
        rows(("  a cat ", None, {}), ("b", None, {}), ("a cat", None, {}), ("a cat", None, {})),
        "p",
        DEFAULTS,
        0,
        1,
    )
    h = hashlib.sha256(b"a cat").hexdigest()[:12]
    assert [i.id for i in items] == [h, hashlib.sha256(b"b").hexdigest()[:12], f"{h}-2", f"{h}-3"]


def test_seeds_follow_the_contract():
    items = expand(rows(("a", "x1", {}), ("b", "x2", {"seed": 100})), "p", DEFAULTS, 7, 3)
    assert [(i.id, i.k, i.seed) for i in items] == [
        ("x1", 0, contract_seed(7, "x1", 0)),
        ("x1", 1, contract_seed(7, "x1", 1)),
        ("x1", 2, contract_seed(7, "x1", 2)),
        ("x2", 0, 100),
        ("x2", 1, 101),
        ("x2", 2, 102),
    ]
    assert all(0 <= i.seed < 2**63 for i in items)


def test_a_seed_depends_only_on_base_seed_id_and_k():
    alone = expand(rows(("a", "x1", {})), "p", DEFAULTS, 0, 1)[0]
    among = expand(rows(("z", "x0", {}), ("a", "x1", {"steps": 9})), "p", DEFAULTS, 0, 1)[1]
    assert alone.seed == among.seed
    assert expand(rows(("a", "x1", {})), "p", DEFAULTS, 1, 1)[0].seed != alone.seed


def test_duplicate_ids_are_refused_with_both_lines():
    with pytest.raises(PromptFileError, match=r"p:3: duplicate id 'x' \(first on line 1\)"):
        expand(rows(("a", "x", {}), ("b", "y", {}), ("c", "x", {})), "p", DEFAULTS, 0, 1)


def test_an_explicit_id_equal_to_a_hash_id_is_a_duplicate():
    h = hashlib.sha256(b"a").hexdigest()[:12]
    with pytest.raises(PromptFileError, match="duplicate id"):
        expand(rows(("a", None, {}), ("b", h, {})), "p", DEFAULTS, 0, 1)


def test_an_explicit_id_equal_to_a_repeat_of_a_hash_id_is_a_duplicate():
    h = hashlib.sha256(b"a").hexdigest()[:12]
    with pytest.raises(PromptFileError, match=rf"p:3: duplicate id '{h}-2' \(first on line 1\)"):
        expand(rows(("c", f"{h}-2", {}), ("a", None, {}), ("a", None, {})), "p", DEFAULTS, 0, 1)
    # a third repeat it is not: the rows have two of them
    items = expand(rows(("c", f"{h}-3", {}), ("a", None, {}), ("a", None, {})), "p", DEFAULTS, 0, 1)
    assert [i.id for i in items] == [f"{h}-3", h, f"{h}-2"]


def test_a_plan_of_more_rows_than_tallied_in_memory_finds_duplicates_and_repeats():
    """Past Tally.SMALL rows, ids are tallied as sorted numpy arrays: the same outcome."""
    n = Tally.SMALL + 10
    specs = [(f"p{i}", f"x{i}", {}) for i in range(n)] + [("same", None, {}), ("same", None, {})]
    h = hashlib.sha256(b"same").hexdigest()[:12]
    assert [i.id for i in expand(rows(*specs), "p", DEFAULTS, 0, 1)[-2:]] == [h, f"{h}-2"]
    specs[n - 1] = ("last", "x7", {})
    with pytest.raises(PromptFileError, match=rf"^p:{n}: duplicate id 'x7' \(first on line 8\)$"):
        expand(rows(*specs), "p", DEFAULTS, 0, 1)


def test_a_source_read_at_each_pass_is_never_held_and_gives_the_same_items():
    """A function source (a Parquet file's rows): each pass reads it anew, from the first row."""
    specs = [("a", None, {}), ("b", "x", {"num_images": 2}), ("a", None, {})]
    reads = []

    def read():
        reads.append(1)
        return iter(rows(*specs))

    plan = Plan(read, "p", DEFAULTS, 3, 1)
    assert len(reads) == 1  # the check: one pass
    assert plan.total == 4
    assert list(plan.items()) == expand(rows(*specs), "p", DEFAULTS, 3, 1)
    pending = plan.pending(skip={("x", 1)})
    assert (len(pending), pending.steps) == (3, 12)
    assert [(i.id, i.k) for i in pending] == [k for k in plan.keys() if k != ("x", 1)]
    assert len(reads) == 5  # items, pending's count, its items, keys
    fresh = plan.pending()  # nothing skipped: counted by the check's pass
    assert (len(fresh), len(reads)) == (4, 5)
    assert fresh.span() == (plan_ids(plan)[0], plan_ids(plan)[-1])


def plan_ids(plan: Plan) -> list[str]:
    return [item_id for item_id, _ in plan.keys()]


def test_row_overrides_and_file_names():
    items = expand(rows(("a", "x", {"width": 32, "num_images": 2, "guidance": 1})), "p", DEFAULTS, 0, 1)
    assert [i.file_stem for i in items] == ["x_0", "x_1"]
    assert items[0].settings == Settings(32, 64, 4, 1.0)


def test_batches_group_compatible_items_and_keep_order():
    specs = [
        ("a", "a", {}),
        ("b", "b", {"steps": 2}),
        ("c", "c", {}),
        ("d", "d", {}),
        ("e", "e", {"steps": 2}),
    ]
    items = expand(rows(*specs), "p", DEFAULTS, 0, 1)
    assert [[i.id for i in b] for b in batches(items, 2)] == [["a", "c"], ["b", "e"], ["d"]]
    assert [[i.id for i in b] for b in batches(items, 1)] == [["a"], ["b"], ["c"], ["d"], ["e"]]
