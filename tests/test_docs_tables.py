"""docs/models.md's tables are the code's: the feature table is the families' registry, the
memory plan bench/memory_plan.py's output."""

from __future__ import annotations

import sys
from pathlib import Path

from flux_batch import families

ROOT = Path(__file__).resolve().parents[1]
MODELS_DOC = (ROOT / "docs" / "models.md").read_text()


def feature_table() -> str:
    rows = [
        "| family | label | variants | cache methods | LoRA | true CFG | input images per row |",
        "|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no"}
    for name in families.names():
        f = families.get(name)
        methods = ", ".join(sorted(f.features.cache_methods))
        rows.append(
            f"| `{name}` | {f.label} | {', '.join(f.variants)} | {methods} | {yes[f.features.lora]} | "
            f"{yes[f.features.true_cfg]} | {f.features.references or 'no'} |"
        )
    return "\n".join(rows)


def test_the_feature_table_is_the_registrys():
    table = feature_table()
    assert table in MODELS_DOC, f"docs/models.md's feature table should read:\n{table}"


def test_the_memory_plan_is_bench_memory_plans_output():
    sys.path.insert(0, str(ROOT))
    from bench.memory_plan import table

    assert table() in MODELS_DOC, f"docs/models.md's memory plan should read:\n{table()}"
