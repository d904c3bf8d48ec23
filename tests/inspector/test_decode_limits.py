"""Decode limits for every accepted format, checked from the header before anything is decoded; OpenCV's own
limit behind them; long names quarantined (and counted) under a bounded reason-file name."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

import inspector.pipeline
from inspector import MAX_FRAME_PIXELS
from inspector.db import Frame
from inspector.imageformat import inspect_image
from inspector.quarantine import Quarantine, QuarantineReason
from inspector.storage import MAX_STORED_NAME, NAME_MAX

ROOT = Path(__file__).resolve().parents[2]


def tiff_of_zeros(width: int, height: int, rows_per_strip: int = 100) -> bytes:
    """A valid, Deflate-compressed 8-bit grey TIFF of zeros: every strip points at the same compressed block, so
    a 12000 x 12000 image (144 MP, 144 MB decoded) is a few KB on disk."""
    strip = zlib.compress(b"\x00" * (width * rows_per_strip), 9)
    strips = (height + rows_per_strip - 1) // rows_per_strip
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, strips, None), (277, 3, 1, 1), (278, 4, 1, rows_per_strip), (279, 4, strips, None)]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = offsets_at
        elif tag == 279:
            value = counts_at
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += b"\x00\x00\x00\x00"
    out += struct.pack(f"<{strips}I", *([data_at] * strips)) + struct.pack(f"<{strips}I", *([len(strip)] * strips))
    return bytes(out + strip)


def jpeg_declaring(width: int, height: int) -> bytes:
    small = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = small.index(b"\xff\xc0")
    return small[:sof + 5] + struct.pack(">HH", height, width) + small[sof + 9:]


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def bmp_declaring(width: int, height: int) -> bytes:
    return (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0,
                                                                      0, 0, 0, 0) + b"\x00" * 64)


def webp_declaring(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def no_decode(monkeypatch):
    """Any call of OpenCV's decoder from the pipeline fails the test."""
    calls: list[int] = []

    def refuse(buf, flags):
        calls.append(len(buf))
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(inspector.pipeline.cv2, "imdecode", refuse)
    return calls


@pytest.mark.parametrize("kind, data", [
    ("tiff", tiff_of_zeros(12000, 12000)),
    ("jpeg", jpeg_declaring(12000, 12000)),
    ("png", png_declaring(12000, 12000)),
    ("bmp", bmp_declaring(12000, 12000)),
    ("webp", webp_declaring(12000, 12000)),
])
def test_oversized_frames_of_every_format_are_refused_from_their_header(kind, data, no_decode):
    header = inspect_image(data)
    assert (header.format, header.width, header.height) == (kind, 12000, 12000)
    with pytest.raises(Quarantine) as refused:
        inspector.pipeline.check_frame_bytes(data, "." + kind, incomplete_final=True)
    assert refused.value.kind == QuarantineReason.TOO_LARGE and "12000x12000" in refused.value.message
    assert no_decode == []


def test_the_12000_square_tiff_is_a_real_image_and_its_quarantine_never_decodes(make_config, start_daemon, wait,
                                                                                 no_decode, tmp_path):
    data = tiff_of_zeros(12000, 12000)
    assert len(data) < 50_000 and 144_000_000 > MAX_FRAME_PIXELS
    check = ("import sys, cv2, numpy as np; d = open(sys.argv[1], 'rb').read(); "
             "img = cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_GRAYSCALE); print(img.shape, int(img.max()))")
    (tmp_path / "big.tif").write_bytes(data)
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": str(1 << 30)}
    shown = subprocess.run([sys.executable, "-c", check, str(tmp_path / "big.tif")], capture_output=True, text=True,
                           env=env, timeout=120)
    assert shown.stdout.strip() == "(12000, 12000) 0", shown.stderr  # control: a valid image, decoded elsewhere

    daemon = start_daemon(make_config(cameras=[{"id": "cam1", "drop_folder": str(tmp_path / "drop1"),
                                                "stable_s": 0.2}]))
    (daemon.cfg.cameras[0].drop_folder / "P00_huge.tiff").write_bytes(data)
    wait(lambda: daemon.pipeline.counts["quarantined"] == 1, timeout=10)
    with daemon.factory() as db:
        row = db.scalars(select(Frame)).one()
    assert row.reason_code == QuarantineReason.TOO_LARGE and Path(row.stored_path).read_bytes() == data
    assert no_decode == []


def test_importing_inspector_sets_opencvs_own_limit_before_cv2_loads():
    """For formats whose header this project does not parse (PGM here) OpenCV's limit refuses the decode."""
    probe = ("import inspector.pipeline as p\n"
             "data = b'P5\\n12000 12000\\n255\\n' + bytes(64)\n"
             "assert p.inspect_image(data).format == 'unknown'\n"
             "try:\n    p.decode_rgb(data)\n"
             "except p.Quarantine as q:\n    print('refused', q.kind.value, 'CV_IO_MAX_IMAGE_PIXELS' in q.message)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert done.stdout.strip() == "refused too_large True", done.stdout + done.stderr


def test_long_names_get_a_bounded_reason_file_and_are_counted(make_config, start_daemon, frames, wait, tmp_path):
    cfg = make_config(cameras=[{"id": "cam1", "drop_folder": str(tmp_path / "drop1"), "stable_s": 0.2,
                                "pattern": r"^(?P<position>P\d+)_[a-z]+_(?P<serial>\d+)\.jpg$"}])
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    junk = "P00_" + "b" * 240 + "_1.jpg"  # 250 characters: its reason file name would be 262
    good = "P00_" + "g" * 245 + "_2.jpg"  # 255: the longest name Linux allows
    (drop / junk).write_bytes(os.urandom(3000))
    good_bytes, _ = frames.jpeg(0, False)
    (drop / good).write_bytes(good_bytes)
    wait(lambda: sum(daemon.pipeline.counts[k] for k in ("ok", "quarantined")) == 2 and daemon.wait_idle(0.1),
         timeout=10)
    assert daemon.pipeline.counts["quarantined"] == 1 and daemon.pipeline.counts["quarantined_corrupt"] == 1
    assert daemon.errors["worker"] == 0
    with daemon.factory() as db:
        found = {f.name: f for f in db.scalars(select(Frame))}
    assert found[good].status == "ok" and Path(found[good].stored_path).read_bytes() == good_bytes
    stored = Path(found[junk].stored_path)
    reason_file = stored.with_name(stored.name + ".reason.json")
    assert len(os.fsencode(stored.name)) <= MAX_STORED_NAME and len(os.fsencode(reason_file.name)) <= NAME_MAX
    assert json.loads(reason_file.read_text())["frame"] == junk  # the full name is kept inside
    assert not list(drop.iterdir())


@pytest.mark.parametrize("ext, params", [(".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".png", []),
                                         (".bmp", []), (".tiff", []), (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
                                         (".webp", []), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])])
def test_every_prefix_of_an_image_is_judged_not_whole(ext, params):
    """What a writer leaves while still writing (any prefix) is never taken for a whole image; the image is."""
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8), (3, 3), 0)
    data = cv2.imencode(ext, image, params)[1].tobytes()
    header = inspect_image(data, ext)
    assert header.whole is True and (header.width, header.height) == (53, 37)
    judged_whole = [n for n in range(len(data)) if inspect_image(data[:n], ext).whole is not False]
    assert judged_whole == [], f"{len(judged_whole)} prefixes judged whole or unknown, e.g. {judged_whole[:5]}"
