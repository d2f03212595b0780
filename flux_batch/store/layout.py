"""The names of the files in a run directory (see docs/run-directory.md)."""

MANIFEST = "metadata.jsonl"  # one record per finished image
ERRORS = "errors.jsonl"  # items that failed and are still not done
RUN_INFO = "run.json"  # the fingerprint and settings of the run
IMAGES = "images"  # the images, each named in its manifest record
LOCK = ".lock"  # the run lock; part locks are .lock.<part>, the merge lock .lock.merge
