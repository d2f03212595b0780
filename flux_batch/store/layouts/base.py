"""What every output layout answers: where an item's image goes, how one process writes it, what
a kill leaves and how the next start repairs it, what is on disk for resume, the card's data
files and the layout's part of the run fingerprint. One class per layout (flat.py, sharded.py,
webdataset.py); `make_layout` (this package's __init__) picks it by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

if TYPE_CHECKING:
    from flux_batch.store.run_dir import RunStore

# Whose leftovers (unfinished tars) a process may repair: takes the writer's part name (None: a
# process alone) and says yes or no.
Mine = Callable[[str | None], bool]


@dataclass(frozen=True)
class Layout:
    """A run's output layout: `size` is images per folder or samples per tar (0 when the layout
    groups nothing); `captions`: the prompt as <stem>.txt beside each image."""

    size: int = 0
    captions: bool = False

    name: ClassVar[str]
    default_size: ClassVar[int | None] = None  # None: output.shard_size means nothing here
    placed_fields: ClassVar[tuple[str, ...]] = ()  # record fields the layout sets itself

    def problem(self) -> str | None:
        """Why these settings cannot work (the line after `output.<key>=<value>: `), or None."""
        return None

    def file_name(self, index: int, stem: str, extension: str) -> str:
        """The item's manifest file_name (index: its place in the plan) as the writer knows it
        before the image is stored."""
        raise NotImplementedError

    def input_file_names(self, index: int, inputs: tuple) -> list[str]:
        """Where the copies of the item's input images go (plan/inputs.InputImage), as the
        writer knows them before they are stored: each input's `file_name` in the record."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """The run fingerprint's `output` group (empty: left out, as for plain flat runs)."""
        found: dict[str, Any] = {"layout": self.name, "shard_size": self.size}
        if self.captions:
            found["captions"] = True
        return found

    def data_files(self, extension: str) -> list[str]:
        """The card's patterns of the files that make the dataset."""
        raise NotImplementedError

    def card_text(self) -> tuple[str, str]:
        """The card's `layout` row and the paragraph on how to load the dataset."""
        raise NotImplementedError

    def has_inputs(self, run_dir: Path) -> bool:
        """Whether the run stored input images (the card then says where they are)."""
        return False

    def inputs_text(self) -> tuple[list[str], str]:
        """For a run with input images: the card's data files that hold them besides
        `data_files`, and the paragraph on where they are."""
        raise NotImplementedError

    @staticmethod
    def on_disk(run_dir: Path, remove_temp: bool) -> set[str]:
        """The manifest file_names (or containers) of what this layout left in `run_dir`, for
        resume; `remove_temp`: delete the temporary files a kill left on the way (only the
        process holding the run alone may)."""
        return set()

    def open(self, store: RunStore) -> Output:
        """This process's writer of the layout's files into `store`."""
        raise NotImplementedError


class Output:
    """One process's writing of a layout's files. `save` runs on the image writer's threads,
    `list` on the render thread in the order images were handed in; an image is in the manifest
    only once it is in a complete file."""

    def save(self, record: dict, data: bytes, prompt: str, inputs: tuple = ()) -> Any:
        """Store one encoded image and the input images it was rendered from (a pool thread;
        `inputs`: plan/inputs.InputImage, their copies named in `record`); what `list` gets back."""
        raise NotImplementedError

    def list(self, record: dict, saved: Any) -> None:
        """Make the image count as done (the render thread, in order)."""
        raise NotImplementedError

    def flush(self) -> None:
        """After the last image or a stop request: whatever is half-filled is finished and listed."""

    def abandon(self) -> None:
        """After a failure or a kill-like stop: leave what is half-filled for the next start."""

    def repair(self, mine: Mine) -> int:
        """At the start, once the run is known to be the same: finish what a kill left and
        unlist what is damaged; the number of images recovered."""
        return 0
