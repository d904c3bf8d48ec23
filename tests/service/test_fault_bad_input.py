"""The bad-input corpus (22 kinds): each input is processed correctly, quarantined with a clear reason, or left
alone when it is not a frame at all; the daemon stays up and good frames keep flowing between them."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from service_harness import FRAME_SIZE, encode, make_frame, wait_until


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG claiming huge dimensions with one row of data (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * min(width, 4096))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")


def _png_zeros(width: int, height: int) -> bytes:
    """A complete, valid black PNG of any size, compressed row by row (a real decompression bomb: ~0.4 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row_block = (b"\x00" + b"\x00" * (3 * width)) * 100
    idat = b"".join(z.compress(row_block) for _ in range(height // 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _good(name_serial: str, seed: int, position: str = "P1", ext: str = ".png") -> tuple[str, bytes]:
    return f"{position}_{name_serial}{ext}", encode(make_frame(position, False, seed), ext)


def test_bad_input_corpus_is_handled_and_good_frames_flow(station, tmp_path: Path) -> None:
    st = station()
    st.config["cameras"][0]["incomplete_after_s"] = 2.0  # truncated files: quarantined once unchanged this long
    st.write_config()
    st.register_templates()
    st.start()
    good = make_frame("P1", False, 7)
    png, jpg = encode(good, ".png"), encode(good, ".jpg")
    outside = tmp_path / "outside_secret.png"
    outside.write_bytes(png)

    quarantined: dict[str, str] = {  # name -> expected reason kind (prefix of the DB reason)
        "P1_empty.png": "empty",
        "P1_truncjpg.jpg": "incomplete",  # a prefix that stopped growing: incomplete_after_s later
        "P1_truncpng.png": "incomplete",
        "P1_text.png": "corrupt",
        "P1_random.jpg": "corrupt",
        "P1_huge.png": "too_large",     # 65535x65535 header: refused before any allocation
        "P1_bomb.png": "too_large",     # 20000x20000 header, one row of data
        "P1_realbomb.png": "too_large",  # a complete, valid 12000x12000 PNG: 432 MB if decoded
        "P9_unknownpos.png": "no_template",
        "nopattern.png": "bad_name",
        "P1_with space.png": "bad_name",
        "P1_ünïcode.png": "bad_name",
        "P1_a..b.png": "bad_name",
        # Wrong size for the station's template: a camera that changed resolution is noticed, never compared
        # against a stretched reference.
        "P1_wrongsize.png": "wrong_size",
        "P1_tiny.png": "wrong_size",
    }
    inputs: dict[str, bytes] = {
        "P1_empty.png": b"",
        "P1_truncjpg.jpg": jpg[: len(jpg) // 2],
        "P1_truncpng.png": png[: len(png) // 2],
        "P1_text.png": b"this is not an image, it only has the extension of one\n" * 10,
        "P1_random.jpg": np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "P1_huge.png": _png_header_only(65535, 65535),
        "P1_bomb.png": _png_header_only(20000, 20000),
        "P1_realbomb.png": _png_zeros(12000, 12000),
        "P9_unknownpos.png": png,
        "nopattern.png": png,
        "P1_with space.png": png,
        "P1_ünïcode.png": png,
        "P1_a..b.png": png,
    }
    # Native libraries complain on stderr about these (libpng "IDAT: CRC error", libjpeg "Corrupt JPEG data"):
    # their lines must reach the journal as JSON like everything else.
    bad_crc = bytearray(png)
    bad_crc[png.index(b"IDAT") + 8] ^= 0xFF
    quarantined["P1_badcrc.png"] = "corrupt"
    inputs["P1_badcrc.png"] = bytes(bad_crc)
    # Processed correctly: format variants the decoder normalises to 8-bit RGB.
    gray = cv2.cvtColor(good, cv2.COLOR_RGB2GRAY)
    processed: dict[str, bytes] = {
        "P1_16bit.png": cv2.imencode(".png", cv2.cvtColor(good, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)[1].tobytes(),
        "P1_alpha.png": cv2.imencode(".png", cv2.cvtColor(good, cv2.COLOR_RGB2BGRA))[1].tobytes(),
        "P1_bitmap.bmp": encode(good, ".bmp"),
        "P1_tiff.tiff": encode(good, ".tiff"),
        "P1_samecontent.png": png,  # same bytes as another frame under a new name: its own row
        "P1_extrabytes.jpg": jpg[:-2] + b"\x12\x34\xff\xd9",  # decodes; libjpeg warns about the extra bytes
    }
    inputs["P1_wrongsize.png"] = encode(cv2.resize(good, (FRAME_SIZE // 2, FRAME_SIZE // 2)), ".png")
    inputs["P1_tiny.png"] = encode(good[:1, :1], ".png")
    # A grayscale frame at a colour station decodes to 3 equal channels: processed, whatever the verdict.
    either: dict[str, bytes] = {"P1_gray.png": encode(gray, ".png")}

    goods: list[str] = []
    for i, (name, data) in enumerate([*inputs.items(), *processed.items(), *either.items()]):
        st.drop_bytes(name, data, via_rename=i % 2 == 1)
        g, gdata = _good(f"g{i:03d}", seed=100 + i)  # a good frame after every bad one
        st.drop_bytes(g, gdata)
        goods.append(g)

    # Not frames at all: ignored and left alone.
    (st.drop / "P1_dir.png").mkdir()                       # a directory named like a frame
    (st.drop / "notes.txt").write_text("operator notes")   # other extension
    (st.drop / "P1_x.png.part").write_bytes(png)           # writer's temp name (never renamed)
    os.symlink(outside, st.drop / "P1_link.png")           # symlink pointing outside the folder

    # A file still being written: half now, the rest later; it must be taken once, complete.
    slow_name = "P1_slowwriter.png"
    with open(st.drop / slow_name, "wb") as handle:
        handle.write(png[: len(png) // 2])
        handle.flush()
        time.sleep(0.8)
        handle.write(png[len(png) // 2:])

    every = set(inputs) | set(processed) | set(either) | set(goods) | {slow_name}
    wait_until(lambda: {r["name"] for r in st.frames()} >= every, 60, what="every input to have a result row")

    # Duplicate of a processed frame (same name, same bytes) dropped again: no second row, file cleared.
    dup_name = goods[0]
    st.drop_bytes(dup_name, _good("g000", seed=100)[1])
    wait_until(lambda: dup_name not in st.drop_files(), 20, what="the duplicate to leave the drop folder")

    rows = {r["name"]: r for r in st.frames()}
    assert len([r for r in st.frames() if r["name"] == dup_name]) == 1
    for name in goods:
        assert rows[name]["status"] == "ok", rows[name]
    for name in processed:
        assert rows[name]["status"] == "ok", f"{name}: {rows[name]}"
    assert rows[slow_name]["status"] == "ok"
    assert rows[slow_name]["sha256"] == hashlib.sha256(png).hexdigest()
    reasons = st.quarantine_reasons()
    for name, kind in quarantined.items():
        row = rows[name]
        assert row["status"] == "quarantined", f"{name}: {row}"
        assert row["reason"] and str(row["reason"]).startswith(kind), f"{name}: {row['reason']}"
        assert name in reasons and reasons[name]["reason"], f"{name}: no .reason.json beside it"
        assert Path(str(row["stored_path"])).is_file()
    half = FRAME_SIZE // 2
    assert f"frame {half}x{half} vs template {FRAME_SIZE}x{FRAME_SIZE}" in rows["P1_wrongsize.png"]["reason"]
    assert f"frame 1x1 vs template {FRAME_SIZE}x{FRAME_SIZE}" in reasons["P1_tiny.png"]["reason"]
    for name in either:
        assert rows[name]["status"] in ("ok", "defective", "quarantined")
        if rows[name]["status"] == "quarantined":
            assert rows[name]["reason"]

    # Non-frames: untouched, no row; the outside target of the symlink is neither moved nor read into the DB.
    left = set(st.drop_files())
    assert {"P1_dir.png", "notes.txt", "P1_x.png.part"} <= left and "P1_link.png" not in left
    assert outside.read_bytes() == png
    assert "P1_dir.png" not in rows and "notes.txt" not in rows and "P1_x.png.part" not in rows
    # The symlink: quarantined as such (checked well after the settle time), never read, nothing kept, no link
    # anywhere under the state directory.
    wait_until(lambda: "P1_link.png" in {r["name"] for r in st.frames()}, 20, what="the symlink's row")
    link_row = {r["name"]: r for r in st.frames()}["P1_link.png"]
    assert link_row["status"] == "quarantined" and str(link_row["reason"]).startswith("symlink"), link_row
    assert link_row["sha256"] is None and link_row["stored_path"] is None
    link_reason = st.quarantine_reasons()["P1_link.png"]
    assert link_reason["kind"] == "symlink" and link_reason["kept"] is False
    assert not [p for p in st.state.rglob("*") if p.is_symlink()]
    assert not any(Path(str(r["stored_path"])).resolve() == outside for r in rows.values() if r["stored_path"])

    # Still alive and still working after all of that.
    assert st.proc is not None and st.proc.poll() is None
    last, data = _good("final", seed=999)
    st.drop_bytes(last, data)
    wait_until(lambda: any(r["name"] == last and r["status"] == "ok" for r in st.frames()), 20, what="a last frame")
    assert st.stop() == 0
    # Every line the daemon wrote (stdout and stderr, as journald gets them) is a JSON object; the native
    # libraries' complaints are among them, as records of their own logger.
    lines = st.log_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and r.get("level") and r.get("msg") is not None for r in records)
    native = [r["msg"] for r in records if r["logger"] == "inspector.native"]
    assert any("libpng" in m or "JPEG" in m for m in native), native
