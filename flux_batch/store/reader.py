"""A run's images read back by their manifest file_name, whatever the layout: a file under
images/, or a member of a tar shard (`shards/000007.tar/000000123.png`). Used by export,
evaluation, the sweep grid and gallery."""

from __future__ import annotations

import os
from pathlib import Path

from flux_batch.store.layouts.tars import member_offsets
from flux_batch.store.names import container


class RunImages:
    """Each tar shard's member table is read once, on first use."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._members: dict[str, dict[str, tuple[int, int]]] = {}

    def read(self, file_name: str) -> bytes:
        """The image's bytes; FileNotFoundError when it is not there."""
        tar = container(file_name)
        if tar == file_name:
            return (self.run_dir / file_name).read_bytes()
        offset, size = self._member(tar, file_name)
        with open(self.run_dir / tar, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def exists(self, file_name: str) -> bool:
        try:
            tar = container(file_name)
            if tar == file_name:
                return (self.run_dir / file_name).is_file()
            self._member(tar, file_name)
            return True
        except OSError:
            return False

    def local_path(self, file_name: str, extract_to: Path) -> Path:
        """A path of the image that other programs (a browser) can open: its own file, or for
        a tar member a copy at `extract_to/<member>` (written once)."""
        if container(file_name) == file_name:
            return self.run_dir / file_name
        path = extract_to / file_name.rpartition("/")[2]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(self.read(file_name))
            os.replace(tmp, path)
        return path

    def _member(self, tar: str, file_name: str) -> tuple[int, int]:
        if tar not in self._members:
            with open(self.run_dir / tar, "rb") as f:
                self._members[tar] = member_offsets(f)
        member = file_name[len(tar) + 1 :]
        try:
            return self._members[tar][member]
        except KeyError:
            raise FileNotFoundError(
                2, "no such member in the tar shard", str(self.run_dir / file_name)
            ) from None
