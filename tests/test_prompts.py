"""Prompt readers: the formats and encodings users feed, and the two real prompt sets."""

from __future__ import annotations

import pytest

from conftest import TEST_DATA
from flux_batch.errors import PromptFileError
from flux_batch.plan.prompts import Fields, read_rows


def write(tmp_path, name: str, data: bytes | str):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_csv_with_quoted_commas_quotes_newlines_bom_and_crlf(tmp_path):
    text = (
        "\ufeffid,Prompt,style\r\n"
        'a1,"a cat, sitting",oil\r\n'
        'a2,"a sign that says ""HELLO""",\r\n'
        'a3,"two lines\r\nof prompt",ink\r\n'
    )
    rows = read_rows(write(tmp_path, "p.csv", text))
    assert [r.prompt for r in rows] == [
        "a cat, sitting",
        'a sign that says "HELLO"',
        "two lines\r\nof prompt",
    ]
    assert [r.id for r in rows] == ["a1", "a2", "a3"]
    assert [r.line for r in rows] == [2, 3, 4]
    assert rows[0].extra == {"style": "oil"}


def test_tsv_is_read_literally(tmp_path):
    text = 'Prompt\tNote\n"G I G G L E" painted on a wall\tquoted\nplain\t\n'
    rows = read_rows(write(tmp_path, "p.tsv", text))
    assert rows[0].prompt == '"G I G G L E" painted on a wall'
    assert rows[1].extra == {"Note": ""}


def test_txt_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    rows = read_rows(write(tmp_path, "p.txt", "first\r\n\n  \nsecond ünïcødé 猫\n"))
    assert [(r.line, r.prompt) for r in rows] == [(1, "first"), (4, "second ünïcødé 猫")]


def test_jsonl_keeps_nested_values_and_reads_overrides(tmp_path):
    text = (
        '{"prompt": "a cow", "include": [{"class": "cow", "count": 1}], "seed": 7, '
        '"steps": "12", "guidance": 2, "width": 512}\n'
    )
    row = read_rows(write(tmp_path, "p.jsonl", text))[0]
    assert row.extra == {"include": [{"class": "cow", "count": 1}]}
    assert row.overrides == {"seed": 7, "steps": 12, "guidance": 2.0, "width": 512}


def test_custom_prompt_and_id_fields(tmp_path):
    text = '{"Caption": "a cow", "key": "c-1"}\n'
    row = read_rows(write(tmp_path, "p.jsonl", text), fields=Fields(prompt="caption", id="key"))[0]
    assert (row.prompt, row.id) == ("a cow", "c-1")


def test_format_override_beats_the_extension(tmp_path):
    rows = read_rows(write(tmp_path, "prompts.list", "a\nb\n"), fmt="txt")
    assert [r.prompt for r in rows] == ["a", "b"]


def test_partiprompts_tsv_reads_every_prompt_intact():
    rows = read_rows(TEST_DATA / "PartiPrompts.tsv")
    assert len(rows) == 1632
    giggle = [r for r in rows if r.prompt.startswith('"G I G G L E"')]
    assert len(giggle) == 1 and giggle[0].line == 1562
    assert set(rows[0].extra) == {"Category", "Challenge", "Note"}


def test_geneval_jsonl_reads_every_prompt_with_its_metadata():
    rows = read_rows(TEST_DATA / "geneval_evaluation_metadata.jsonl")
    assert len(rows) == 553
    assert rows[0].extra["tag"] == "single_object"
    assert rows[0].extra["include"] == [{"class": "bench", "count": 1}]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("p.jsonl", '{"prompt": "ok"}\n{"prompt": "bad"\n', "p.jsonl:2: invalid JSON"),
        ("p.jsonl", '["a list"]\n', "p.jsonl:1: expected a JSON object, got list"),
        ("p.jsonl", '{"text": "no prompt"}\n', "p.jsonl:1: no 'prompt' field"),
        ("p.jsonl", '{"prompt": "   "}\n', "p.jsonl:1: empty 'prompt'"),
        ("p.jsonl", '{"prompt": 3}\n', "p.jsonl:1: 'prompt' must be a string"),
        ("p.jsonl", '{"prompt": "a", "id": "../x"}\n', "p.jsonl:1: bad id '../x'"),
        ("p.jsonl", '{"prompt": "a", "seed": -1}\n', "p.jsonl:1: seed=-1 must be between 0 and"),
        ("p.jsonl", '{"prompt": "a", "seed": 1.5}\n', "p.jsonl:1: seed=1.5 is not an integer"),
        ("p.jsonl", '{"prompt": "a", "steps": "many"}\n', "p.jsonl:1: steps='many' is not an integer"),
        ("p.jsonl", '{"prompt": "a", "steps": 0}\n', "p.jsonl:1: steps=0 must be >= 1"),
        ("p.jsonl", '{"prompt": "a", "width": 100}\n', "p.jsonl:1: width=100 is not a multiple of 16"),
        ("p.jsonl", '{"prompt": "a", "guidance": "nan"}\n', "p.jsonl:1: guidance='nan' must be a finite"),
        ("p.jsonl", '{"prompt": "a", "sha256": "x"}\n', "p.jsonl:1: column 'sha256' would overwrite"),
        (
            "p.jsonl",
            '{"prompt": "a", "Prompt": "b"}\n',
            "p.jsonl:1: fields 'prompt' and 'Prompt' differ only in case",
        ),
        ("p.csv", "prompt,prompt\na,b\n", "p.csv:1: duplicate column 'prompt'"),
        ("p.csv", "prompt,x\na,b,c\n", "p.csv:2: 3 comma-separated fields, the header has 2"),
        ("p.csv", 'prompt\n"unterminated\n', "p.csv:2: malformed CSV"),
        ("p.tsv", "Prompt\tx\na\n", "p.tsv:2: 1 tab-separated fields, the header has 2"),
        ("p.jsonl", b'{"prompt": "ok"}\n{"prompt": "\xff"}\n', "p.jsonl:2: not valid UTF-8"),
        ("p.jsonl", "", "p.jsonl: no prompts found"),
        ("p.jsonl", "\n\n", "p.jsonl: no prompts found"),
        ("p.yaml", "prompt: a\n", "p.yaml: unknown prompt file format '.yaml'"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, name, data, expected):
    path = write(tmp_path, name, data)
    with pytest.raises(PromptFileError) as error:
        read_rows(path)
    assert str(error.value).startswith(f"{tmp_path}/{expected}")


def test_every_bad_row_is_reported_not_only_the_first(tmp_path):
    text = '{"prompt": ""}\n{"prompt": "ok"}\n{"nope": 1}\n'
    with pytest.raises(PromptFileError) as error:
        read_rows(write(tmp_path, "p.jsonl", text))
    assert [p.split(": ")[0] for p in error.value.problems] == [
        f"{tmp_path}/p.jsonl:1",
        f"{tmp_path}/p.jsonl:3",
    ]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PromptFileError, match="prompt file not found"):
        read_rows(tmp_path / "absent.jsonl")
    with pytest.raises(PromptFileError, match="is a directory"):
        read_rows(tmp_path)
