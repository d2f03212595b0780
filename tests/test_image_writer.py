"""The image writer: images encoded and written on a pool of threads while the next batch
renders, their manifest lines appended in order, each after its image is on disk."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import FAST, manifest, write_prompts
from flux_batch.errors import WriteError
from flux_batch.plan.items import Item, Settings
from flux_batch.store.run_dir import RunStore
from flux_batch.store.writer import ImageOptions, ImageWriter

SETTINGS = Settings(16, 16, 2, 3.5, 1.0, "euler")
OPTIONS = ImageOptions(format="png", quality=95, model="tiny", quant="q8_0", model_label="t")


def items(n: int) -> list[Item]:
    return [Item(f"i{i}", 0, f"prompt {i}", i, SETTINGS, f"i{i}") for i in range(n)]


def image(i: int) -> np.ndarray:
    return np.full((16, 16, 3), (i + 1) / 20, dtype=np.float32)


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "run")
    store.open()
    yield store
    store.close()


def listed_ids(store: RunStore) -> list[str]:
    return [r["id"] for r in manifest(store.dir)]


def test_records_follow_the_order_images_were_handed_in(store, monkeypatch):
    """The first image's write is the slowest; its line still comes first."""
    save = store.save_image

    def slow_first(file_name, data):
        if file_name.endswith("i0.png"):
            time.sleep(0.3)
        save(file_name, data)

    monkeypatch.setattr(store, "save_image", slow_first)
    listed = []
    writer = ImageWriter(store, OPTIONS, workers=3, queue=8, on_written=lambda item: listed.append(item.id))
    for i, item in enumerate(items(5)):
        writer.write(item, image(i))
    writer.drain()
    writer.close()
    assert listed_ids(store) == listed == ["i0", "i1", "i2", "i3", "i4"]


def test_a_full_queue_holds_the_render_thread(store, monkeypatch):
    """With queue=2, handing in a third image waits until the oldest is written: memory is
    bounded by the queue, whatever the writers' speed."""
    gate = threading.Event()
    save = store.save_image
    monkeypatch.setattr(store, "save_image", lambda name, data: (gate.wait(10), save(name, data)))
    writer = ImageWriter(store, OPTIONS, workers=1, queue=2)
    three = items(3)
    writer.write(three[0], image(0))
    writer.write(three[1], image(1))
    third = threading.Thread(target=writer.write, args=(three[2], image(2)))
    third.start()
    third.join(0.5)
    assert third.is_alive(), "the third image went in past a full queue"
    assert listed_ids(store) == []  # nothing is listed before its image is on disk
    gate.set()
    third.join(10)
    writer.drain()
    writer.close()
    assert listed_ids(store) == ["i0", "i1", "i2"]


def test_a_failed_write_stops_with_one_line_and_lists_nothing_after_it(store, monkeypatch):
    save = store.save_image

    def full_disk(file_name, data):
        if file_name.endswith("i1.png"):
            raise OSError(28, "No space left on device", file_name)
        save(file_name, data)

    monkeypatch.setattr(store, "save_image", full_disk)
    writer = ImageWriter(store, OPTIONS, workers=2, queue=8)
    # the failure surfaces at the first listing after it: a later `write` (when the pool has
    # finished i1 by then) or the `drain`
    with pytest.raises(WriteError, match="No space left on device.*run the same command to resume"):
        for i, item in enumerate(items(4)):
            writer.write(item, image(i))
        writer.drain()
    writer.close()
    assert listed_ids(store) == ["i0"]


def test_pooled_and_serial_writing_give_the_same_run(cli):
    rows = [{"id": f"p{i}", "prompt": f"a photo of object {i}"} for i in range(6)]
    write_prompts(cli.cwd / "p.jsonl", rows)
    cli("dataset.path=p.jsonl", "output.dir=pooled", "batch_size=2", *FAST)
    cli("dataset.path=p.jsonl", "output.dir=serial", "batch_size=2", "runtime.writers=0", *FAST)
    pooled, serial = manifest(cli.cwd / "pooled"), manifest(cli.cwd / "serial")
    assert [r["id"] for r in pooled] == [f"p{i}" for i in range(6)]
    assert pooled == serial  # the same records, in the same order, with the same image hashes
