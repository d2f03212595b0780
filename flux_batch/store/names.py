"""The names of the files in a run directory (see docs/run-directory.md); where each layout puts
its images is the layout's own (store/layouts/)."""

from __future__ import annotations

MANIFEST = "metadata.jsonl"  # one record per finished image
ERRORS = "errors.jsonl"  # items that failed and are still not done
RUN_INFO = "run.json"  # the fingerprint and settings of the run
IMAGES = "images"  # flat and sharded: the images, each named in its manifest record
INPUTS = "inputs"  # flat and sharded: a copy of each input image, named by its sha256
LOCK = ".lock"  # the run lock; part locks are .lock.<part>, the merge lock .lock.merge
README = "README.md"  # the dataset card
SHARDS = "shards"  # webdataset: the tar shards
INDEX = "index"  # webdataset: one Parquet index per tar shard


def container(file_name: str) -> str:
    """The file that holds an image: `shards/000007.tar` for `shards/000007.tar/000000123.png`,
    the image's own file otherwise."""
    head, sep, _ = file_name.partition(".tar/")
    return head + ".tar" if sep else file_name
