"""The names of a webdataset run's files: tar shards, their samples' keys, their indexes."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from flux_batch.store.input_files import COPY
from flux_batch.store.layouts.tars import PARTIAL
from flux_batch.store.names import INDEX, SHARDS

# shards/000007.tar (a process alone), shards/rank-1-000007.tar, shards/shard-2-rank-1-000007.tar
_TAR = re.compile(r"^(?:((?:shard-\d+-)?rank-\d+|shard-\d+)-)?(\d{6,})\.tar$")


def sample_key(index: int) -> str:
    """A webdataset sample's key: the item's plan position in 9 digits (ids may hold dots;
    WebDataset splits a member's name at its first dot)."""
    return f"{index:09d}"


def tar_name(owner: str | None, number: int) -> str:
    """`shards/000007.tar`, or `shards/<owner>-000007.tar` for a scale-out run's worker: each
    writer numbers its own tars, so no two processes ever write one."""
    return f"{SHARDS}/{owner + '-' if owner else ''}{number:06d}.tar"


def parse_tar_name(name: str) -> tuple[str | None, int] | None:
    """(owner, number) of a tar shard's file name (`000007.tar`), or None."""
    m = _TAR.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def placed(record: dict, tar: str, member: str) -> dict:
    """The record of a sample stored as `member` of `tar`: file_name says where (the tar's path
    then the member's name), shard and key follow it; its inputs' copies are placed in the
    same tar."""
    rest = {k: v for k, v in record.items() if k not in ("file_name", "shard", "key")}
    if "input_file_name" in rest:
        rest["inputs"] = [{**i, COPY: _in_tar(tar, i[COPY])} for i in rest["inputs"]]
        rest["input_file_name"] = _in_tar(tar, rest["input_file_name"])
    return {"file_name": f"{tar}/{member}", "shard": tar, "key": member.split(".", 1)[0], **rest}


def _in_tar(tar: str, file_name: str) -> str:
    """`shards/000007.tar/000000123.input.png` of a member's name, placed or placed elsewhere."""
    return f"{tar}/{file_name.rpartition('/')[2]}"


def index_path(run_dir: Path, tar: str) -> Path:
    """index/000007.parquet for shards/000007.tar."""
    return run_dir / INDEX / (Path(tar).stem + ".parquet")


def scan(folder: Path) -> Iterator[tuple[str | None, tuple[bool, int]]]:
    """(owner, (is temporary, number)) of every shard and temporary shard file in `folder`."""
    for name in os.listdir(folder):
        temp = name.startswith(".") and name.endswith(PARTIAL)
        parsed = parse_tar_name(name[1 : -len(PARTIAL)] if temp else name)
        if parsed is not None:
            yield parsed[0], (temp, parsed[1])
