"""layout=flat: `images/<stem>.png`, each image its own file (with `output.captions`, the prompt
as `images/<stem>.txt` beside it), the input images of an edit once each in `inputs/`; the run
directory loads as an imagefolder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_batch.faults import crash_point
from flux_batch.store.atomic import TMP_SUFFIX
from flux_batch.store.input_files import InputCopies, copy_name
from flux_batch.store.layouts.base import Layout, Output
from flux_batch.store.names import IMAGES, INPUTS

if TYPE_CHECKING:
    from flux_batch.store.run_dir import RunStore

LOAD_IMAGEFOLDER = (
    '\nLoad it with `datasets.load_dataset("imagefolder", data_dir=...)` or from the Hub '
    "by its name; the `.txt` files beside the images, when present, are the prompts.\n"
)
INPUTS_TEXT = (
    "\nAn image rendered from input images (an edit) has `input_file_name`, its first input's "
    f"copy in `{INPUTS}/` (named by its SHA-256: an input many images share is stored once), "
    "which `imagefolder` loads as the `input` image column; `inputs` lists every input with "
    "its copy (`copy`, relative to the run directory).\n"
)


class Flat(Layout):
    name = "flat"

    def file_name(self, index: int, stem: str, extension: str) -> str:
        return f"{IMAGES}/{stem}{extension}"

    def input_file_names(self, index: int, inputs: tuple) -> list[str]:
        return [copy_name(image) for image in inputs]

    def fingerprint(self) -> dict[str, Any]:
        return {"captions": True} if self.captions else {}  # absent for plain flat: older runs keep theirs

    def data_files(self, extension: str) -> list[str]:
        return ["metadata.jsonl", f"{IMAGES}/*{extension}"]

    def card_text(self) -> tuple[str, str]:
        return self.name, LOAD_IMAGEFOLDER

    def has_inputs(self, run_dir: Path) -> bool:
        return (run_dir / INPUTS).is_dir()

    def inputs_text(self) -> tuple[list[str], str]:
        return [f"{INPUTS}/*"], INPUTS_TEXT

    @staticmethod
    def on_disk(run_dir: Path, remove_temp: bool) -> set[str]:
        """The images, and the input copies (whose temp files a kill left go the same way)."""
        images = list_folder(run_dir, run_dir / IMAGES, remove_temp)
        return images | list_folder(run_dir, run_dir / INPUTS, remove_temp)

    def open(self, store: RunStore) -> Output:
        return ImageFiles(store, self.captions)


FLAT = Flat()  # the default layout


class ImageFiles(Output):
    """Each image written atomically on a pool thread (its input copies before it, its caption
    after it), then its manifest line appended: a listed image always has its file, inputs and
    caption."""

    def __init__(self, store: RunStore, captions: bool):
        self.store = store
        self.captions = captions
        self.inputs = InputCopies(store.dir)

    def save(self, record: dict, data: bytes, prompt: str, inputs: tuple = ()) -> None:
        self.inputs.store(inputs)
        self.store.save_image(record["file_name"], data)
        crash_point("image_written")
        if self.captions:  # before the manifest line: a listed image always has its caption
            self.store.save_caption(caption_name(record["file_name"]), prompt)

    def list(self, record: dict, saved: None) -> None:
        self.store.manifest.append(record)
        crash_point("manifest_appended")


def caption_name(image_file_name: str) -> str:
    """`images/…/<stem>.txt` beside `images/…/<stem>.png`."""
    return image_file_name.rsplit(".", 1)[0] + ".txt"


def list_folder(run_dir: Path, folder: Path, remove_temp: bool) -> set[str]:
    """The file_names in `folder` (a temp file a kill left removed, when asked), or none."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    prefix = f"{folder.relative_to(run_dir).as_posix()}/"  # once per folder: 1M names
    temps = {name for name in names if name[0] == "." and name.endswith(TMP_SUFFIX)} if remove_temp else ()
    for name in temps:  # what a kill left mid-write
        os.unlink(folder / name)
    return {prefix + name for name in names if not temps or name not in temps}
