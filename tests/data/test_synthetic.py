"""Synthetic generator: exact boxes, determinism, shift bound, DeepPCB round trip, torch-free import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data.deeppcb import DeepPCBReader, split_by_group, read_list_file
from training.data.synthetic import (
    SURFACES,
    SYNTHETIC_CLASSES,
    SyntheticDataset,
    SyntheticSpec,
    generate_frame,
    generate_sample,
    make_position_template,
    write_deeppcb_layout,
)


def _changed_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("surface", SURFACES)
def test_boxes_are_tight_bboxes_of_changed_pixels(surface: str) -> None:
    spec = SyntheticSpec(surface=surface, height=128, width=160, max_shift=0, noise_std=0.0, gain_jitter=0.0,
                         defects_per_image=(1, 3), defect_size=(6, 24), positions=3)
    checked = 0
    for seed in range(12):
        s = generate_frame(spec, seed % 3, seed, defective=True)
        changed = (s.image != s.template).any(axis=2)
        covered = np.zeros_like(changed)
        for box in s.boxes.astype(int):
            x1, y1, x2, y2 = box
            covered[y1:y2, x1:x2] = True
            # each box is exactly the bbox of the changed pixels inside it
            sub = np.zeros_like(changed)
            sub[y1:y2, x1:x2] = changed[y1:y2, x1:x2]
            assert _changed_bbox(sub) == box.tolist()
            checked += 1
        assert not (changed & ~covered).any(), "pixels changed outside every box"
        assert set(s.labels.tolist()) <= set(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert checked >= 12


def test_normal_frame_equals_template_without_noise() -> None:
    spec = SyntheticSpec(noise_std=0.0, gain_jitter=0.0)
    s = generate_frame(spec, 2, 0, defective=False)
    assert s.is_normal and len(s.boxes) == 0
    np.testing.assert_array_equal(s.image, s.template)
    np.testing.assert_array_equal(s.template, make_position_template(spec, 2))


def test_seeded_and_deterministic() -> None:
    spec = SyntheticSpec(surface="fabric", max_shift=3)
    a, b = generate_sample(spec, 123), generate_sample(spec, 123)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    c = generate_sample(spec, 124)
    assert not np.array_equal(a.image, c.image)


def test_shift_stays_within_max_shift() -> None:
    spec = SyntheticSpec(surface="metal", max_shift=3, noise_std=0.0, gain_jitter=0.0, height=96, width=96)
    template = make_position_template(spec, 0)
    for seed in range(6):
        frame = generate_frame(spec, 0, seed, defective=False).image
        found = [
            (dx, dy)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if np.array_equal(frame[8:-8, 8:-8], _shifted(template, frame, dx, dy))
        ]
        assert found, "frame is not the template moved by at most max_shift px"


def _shifted(template: np.ndarray, frame: np.ndarray, dx: int, dy: int) -> np.ndarray:
    h, w = template.shape[:2]
    return template[8 + dy : h - 8 + dy, 8 + dx : w - 8 + dx]


def test_normal_fraction_and_dataset_normal_flags() -> None:
    ds = SyntheticDataset(SyntheticSpec(normal_fraction=0.5, height=64, width=64, defect_size=(4, 12)), 40, seed=1)
    flags = [ds.is_normal(i) for i in range(len(ds))]
    assert flags == [ds[i].is_normal for i in range(len(ds))]
    assert 5 < sum(flags) < 35


def test_spec_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="defects_per_image"):
        SyntheticSpec(defects_per_image=(3, 1))
    with pytest.raises(ValueError, match="defect_size"):
        SyntheticSpec(height=32, width=32, defect_size=(4, 30))
    with pytest.raises(ValueError):
        SyntheticSpec(colour="red")  # extra keys are errors


def test_write_deeppcb_layout_round_trip(tmp_path: Path) -> None:
    spec = SyntheticSpec(height=64, width=64, defect_size=(6, 14), normal_fraction=0.3)
    list_path = write_deeppcb_layout(tmp_path, 7, spec, seed=5, group_size=4)
    assert not list_path.read_text().endswith("\n")
    reader = DeepPCBReader(tmp_path)
    assert reader.class_names == SYNTHETIC_CLASSES and len(reader) == 7 and reader.issues.issues == []
    for i in range(7):
        expected = generate_sample(spec, (5, i))
        got = reader[i]
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.is_normal == expected.is_normal
        assert np.abs(got.template.astype(int) - expected.template.astype(int)).mean() < 3  # JPEG q95
    train, val = split_by_group(read_list_file(list_path), ["group00002"])
    assert (len(train), len(val)) == (4, 3)


def test_synthetic_module_is_torch_free() -> None:
    code = (
        "import sys; import training.data.synthetic as s; "
        "s.generate_sample(s.SyntheticSpec(height=64, width=64, defect_size=(4, 12)), 0); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_cli_writes_a_readable_dataset(tmp_path: Path, capsys) -> None:
    from training.data.synthetic import main

    assert main([str(tmp_path / "ds"), "--n", "3", "--size", "64", "--surface", "fabric"]) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
    reader = DeepPCBReader(tmp_path / "ds")
    assert len(reader) == 3 and reader[0].image.shape == (64, 64, 3)
