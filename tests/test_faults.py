"""The fault-injection spec the crash-safety tests are written in."""

from __future__ import annotations

import io

import numpy as np
import pytest

from flux_batch import faults


@pytest.fixture(autouse=True)
def disarm():
    yield
    faults.configure("")


def test_hits_count_per_point_and_n_plus_repeats():
    faults.configure("pipeline_image:2:nan,pipeline_image:4+:black,mid_append:1:EIO")
    image = np.full((2, 2, 3), 0.5)
    seen = [faults.image(image) for _ in range(6)]
    assert [bool(np.isnan(s).any()) for s in seen] == [False, True, False, False, False, False]
    assert [not s.any() for s in seen] == [False, False, False, True, True, True]


def test_a_write_point_leaves_half_the_data_before_failing(tmp_path):
    faults.configure("mid_append:1:ENOSPC")
    with open(tmp_path / "f", "wb") as f:
        with pytest.raises(OSError, match="No space left on device"):
            faults.write(f, b"0123456789", "mid_append")
    assert (tmp_path / "f").read_bytes() == b"01234"


@pytest.mark.parametrize("spec", ["nowhere:1", "mid_append:1:explode", "mid_append:x"])
def test_a_bad_spec_is_refused(spec):
    with pytest.raises(ValueError):
        faults.configure(spec)


def test_unarmed_points_do_nothing():
    faults.configure("")
    buffer = io.BytesIO()
    faults.write(buffer, b"data", "mid_append")
    faults.crash_point("model_loaded")
    assert buffer.getvalue() == b"data"
