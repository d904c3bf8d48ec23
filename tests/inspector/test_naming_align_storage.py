"""Small pure parts: file names, alignment accuracy, storage layout and retention."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from inspector.align import align_template, fill_uncovered, warp_template
from inspector.naming import FrameNameError, is_candidate, parse_frame_name
from inspector.frame_file import read_frame
from inspector.storage import dated_dir, purge_older_than, store_frame, unique_destination, write_reason

EXT = [".jpg", ".png"]


def test_temp_names_and_other_extensions_are_not_candidates():
    assert is_candidate("P01_7.jpg", EXT) and is_candidate("/x/P01_7.PNG", EXT)
    for name in (".P01_7.jpg", "P01_7.jpg.tmp", "P01_7.jpg.part", "~P01.jpg", "P01_7.txt", "P01_7.jpg.reason.json"):
        assert not is_candidate(name, EXT), name


def test_parse_frame_name_groups_and_errors():
    pattern = r"^(?P<position>P\d+)_(?P<serial>\d+)_(?P<timestamp>\d{8}T\d{6})\.jpg$"
    name = parse_frame_name(pattern, "P03_42_20260131T120501.jpg")
    assert (name.position, name.serial) == ("P03", "42")
    assert name.timestamp == datetime(2026, 1, 31, 12, 5, 1, tzinfo=timezone.utc)
    assert parse_frame_name(r"^(?P<position>\w+)\.jpg$", "A1.jpg").serial is None
    with pytest.raises(FrameNameError, match="does not match"):
        parse_frame_name(pattern, "garbage.jpg")


@pytest.mark.parametrize("method", ["phase", "ecc"])
def test_alignment_recovers_a_known_shift(method, frames):
    template = frames.templates["P00"]
    big = np.tile(template, (3, 3, 1))[:320, :320]  # >= 256 px: exercises the downscaled path too
    for dx, dy in [(5.0, -3.0), (-7.0, 6.0), (0.0, 0.0)]:
        frame = warp_template(big, dx, dy)
        result = align_template(frame, big, method)
        assert result.aligned
        assert abs(result.shift[0] - dx) < 0.6 and abs(result.shift[1] - dy) < 0.6, (method, dx, dy, result.shift)
        inner = (slice(12, -12), slice(12, -12))
        assert np.abs(result.template[inner].astype(int) - frame[inner]).mean() < 4.0


@pytest.mark.parametrize("dx, dy", [(5.0, -3.0), (-7.0, 6.0)])
def test_aligned_template_leaves_no_difference_where_it_has_no_data(frames, dx, dy):
    """The band the template moved away from is taken from the frame: no border stripes for the detector."""
    template = np.tile(frames.templates["P00"], (2, 2, 1))[:300, :300]
    frame = warp_template(template, dx, dy)
    frame[:, :, 0] = 255 - frame[:, :, 0]  # the frame differs everywhere, so a copied band is unmistakable
    result = align_template(frame, template, "none")
    assert result.shift == (0.0, 0.0)
    aligned = fill_uncovered(warp_template(template, dx, dy), frame, dx, dy)
    cols = slice(0, 5) if dx > 0 else slice(300 - 7, 300)
    rows = slice(300 - 3, 300) if dy < 0 else slice(0, 6)
    assert np.array_equal(aligned[:, cols], frame[:, cols])
    assert np.array_equal(aligned[rows, :], frame[rows, :])
    inner = (slice(10, -10), slice(10, -10))
    assert np.array_equal(aligned[inner], warp_template(template, dx, dy)[inner])  # untouched elsewhere


def test_alignment_rejects_shifts_beyond_max(frames):
    template = frames.templates["P01"]
    frame = warp_template(template, 10, 0)
    result = align_template(frame, template, "phase", max_shift=4)
    assert not result.aligned and result.shift == (0.0, 0.0)
    assert align_template(frame, template, "none").shift == (0.0, 0.0)


def test_storage_layout_quarantine_reason_and_retention(tmp_path):
    when = datetime(2026, 3, 4, 10, 0, tzinfo=timezone.utc)
    d = dated_dir(tmp_path / "processed", "cam1", when)
    assert d == tmp_path / "processed" / "cam1" / "2026-03-04"
    d.mkdir(parents=True)
    (d / "a.jpg").write_bytes(b"x")
    assert unique_destination(d, "a.jpg", "abcdef0123456789").name == "a-abcdef012345.jpg"
    assert unique_destination(d, "b.jpg", "abc").name == "b.jpg"

    src = tmp_path / "drop" / "bad.jpg"
    src.parent.mkdir()
    src.write_bytes(b"junk")
    dest = store_frame(src, dated_dir(tmp_path / "q", "cam1", when) / "bad.jpg", read_frame(src, 1 << 20))
    write_reason(dest, {"kind": "corrupt"})
    assert not src.exists() and dest.read_bytes() == b"junk"
    assert json.loads((dest.parent / "bad.jpg.reason.json").read_text()) == {"kind": "corrupt"}

    old = dated_dir(tmp_path / "processed", "cam1", when - timedelta(days=40))
    old.mkdir(parents=True)
    (tmp_path / "processed" / "cam1" / "not-a-date").mkdir()
    assert purge_older_than(tmp_path / "processed", 30, now=when) == 1
    assert not old.exists() and d.exists() and (tmp_path / "processed" / "cam1" / "not-a-date").exists()
    assert purge_older_than(tmp_path / "processed", None, now=when) == 0
