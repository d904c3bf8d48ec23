"""Images of the review page, addressed only by database id.

A request names a frame, detection or review-event *id*; the file behind it is the path the daemon stored in
the database, and it is served only if it resolves (symlinks followed) inside this station's own directories
(processed, quarantine, annotated, template stores). No part of a request ever reaches the file system.

Crops are rendered server-side exactly as the detector saw the pair: the stored frame, the template version the
frame was inspected against (``frames.template_id``), moved by the recorded alignment offset
(``shift_x/shift_y``, the same warp and uncovered-band fill as the daemon), the same box cut from both, and their
absolute difference as a heat map. Decoding is bounded (file size, declared pixels) and runs at most
``render_workers`` at a time, so review traffic cannot take the inspection's CPU.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from inspector import MAX_FRAME_PIXELS
from inspector.align import fill_uncovered, warp_template
from inspector.config import StationConfig
from inspector.db.models import DetectionRow, Frame, ReviewEvent, Template
from inspector.imageformat import inspect_image

MAX_FILE_BYTES = 256 * 1024 * 1024
HEADER_BYTES = 1024 * 1024  # enough for a JPEG's start-of-frame after large EXIF blocks
THUMB_WIDTH = 240
CROP_MARGIN = 0.6  # context around the box, as a fraction of its larger side
MIN_CROP = 48  # px: tiny defects still get surroundings
DIFF_GAIN = 4.0  # |frame - template| * gain, clipped: the same scale on every crop, so crops compare
CACHE_BYTES = 192 * 1024 * 1024
BROWSER_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
CROP_KINDS = ("frame", "template", "diff")


def _dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) the image's header declares (any format the daemon takes), without decoding."""
    header = inspect_image(data)
    return (header.width, header.height) if header.width and header.height else None


class ImageUnavailable(Exception):
    """No image for this id (unknown id, file gone, outside the station's directories, undecodable)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Encoded:
    data: bytes
    media_type: str


def station_roots(cfg: StationConfig) -> list[Path]:
    roots = [cfg.dir_for(name) for name in ("processed", "quarantine", "annotated", "templates")]
    roots += [cfg.template_dir(cam) for cam in cfg.cameras]
    return sorted({Path(r).resolve() for r in roots})


class StationFiles:
    """Maps a stored path (from the database, never from a request) to a readable file under the roots."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def resolve(self, stored: str | None) -> Path:
        if not stored:
            raise ImageUnavailable("no image was stored for this result")
        try:
            path = Path(stored).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageUnavailable("the image file is no longer there (retention, or another station's disk)",
                                   410) from None
        if not any(path.is_relative_to(root) for root in self.roots):
            raise ImageUnavailable("the image lies outside this station's directories", 403)
        if not path.is_file():
            raise ImageUnavailable("not a regular file", 403)
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageUnavailable("image file too large to serve", 413)
        return path

    def read(self, stored: str | None) -> tuple[bytes, str]:
        path = self.resolve(stored)
        return path.read_bytes(), path.suffix.lower()


def decode(data: bytes, reduced: int = 1) -> np.ndarray:
    """BGR image, refusing pixel bombs before decoding; ``reduced`` 2/4/8 decodes JPEGs at that scale."""
    dims = _dimensions(data)
    if dims is not None and dims[0] * dims[1] > MAX_FRAME_PIXELS:
        raise ImageUnavailable(f"image declares {dims[0]}x{dims[1]} pixels; not decoded", 413)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduced]
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        image = None
    if image is None:
        raise ImageUnavailable("the stored file is not a decodable image", 422)
    return image


def encode(image: np.ndarray, fmt: str = ".png", quality: int = 90) -> Encoded:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(fmt, image, params)
    if not ok:
        raise ImageUnavailable("cannot encode the image", 500)
    return Encoded(buf.tobytes(), BROWSER_TYPES[fmt])


def crop_window(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer window (x1, y1, x2, y2) around ``box`` with context, clipped to the image, never empty."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0)
    margin = max(side * CROP_MARGIN, (MIN_CROP - side) / 2, 0.0)
    cx1, cy1 = int(np.floor(max(0.0, x1 - margin))), int(np.floor(max(0.0, y1 - margin)))
    cx2, cy2 = int(np.ceil(min(float(width), x2 + margin))), int(np.ceil(min(float(height), y2 + margin)))
    cx1, cy1 = min(cx1, width - 1), min(cy1, height - 1)
    return cx1, cy1, max(cx2, cx1 + 1), max(cy2, cy1 + 1)


def difference_heat(frame: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Per-pixel max-channel |frame - template|, fixed gain, INFERNO colour map (BGR)."""
    diff = cv2.absdiff(frame, template).max(axis=2).astype(np.float32)
    return cv2.applyColorMap(np.clip(diff * DIFF_GAIN, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


@dataclass
class _Pair:
    frame: np.ndarray  # BGR
    template: np.ndarray | None  # BGR, aligned onto the frame

    @property
    def nbytes(self) -> int:
        return self.frame.nbytes + (self.template.nbytes if self.template is not None else 0)


class Renderer:
    def __init__(self, cfg: StationConfig, factory: sessionmaker[Session], workers: int = 2) -> None:
        self.factory = factory
        self.files = StationFiles(station_roots(cfg))
        self._slots = threading.BoundedSemaphore(workers)
        self._cache: OrderedDict[int, _Pair] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- whole frames -----------------------------------------------------------------------------------------
    def frame_image(self, frame_id: int, kind: str) -> Encoded:
        """``image``: the stored frame (JPEG/PNG bytes as stored, others re-encoded); ``annotated``: the
        daemon's annotated copy; ``thumb``: a small JPEG of the annotated copy (or the frame)."""
        with self.factory() as db:
            frame = db.get(Frame, frame_id)
            if frame is None:
                raise ImageUnavailable(f"no frame {frame_id}")
            stored, annotated = frame.stored_path, frame.annotated_path
        if kind == "annotated":
            stored = annotated
        elif kind == "thumb" and annotated:
            try:
                self.files.resolve(annotated)
                stored = annotated
            except ImageUnavailable:
                pass
        data, suffix = self.files.read(stored)
        if kind != "thumb" and suffix in BROWSER_TYPES:
            return Encoded(data, BROWSER_TYPES[suffix])
        with self._slots:
            if kind == "thumb":
                image = decode(data, reduced=_reduction(data, THUMB_WIDTH))
                if image.shape[1] > THUMB_WIDTH:
                    height = max(1, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
                    image = cv2.resize(image, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
                return encode(image, ".jpg", 80)
            return encode(decode(data), ".jpg", 92)

    def frame_size(self, stored: str | None) -> tuple[int, int] | None:
        """(width, height) of a stored frame from its file header (no decode); None when unknown."""
        try:
            path = self.files.resolve(stored)
        except ImageUnavailable:
            return None
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
        dims = _dimensions(head)
        if dims is None:
            with self._slots:
                try:
                    image = decode(path.read_bytes())
                except ImageUnavailable:
                    return None
            return image.shape[1], image.shape[0]
        return dims

    # -- crops ------------------------------------------------------------------------------------------------
    def detection_crop(self, detection_id: int, kind: str) -> Encoded:
        with self.factory() as db:
            det = db.get(DetectionRow, detection_id)
            if det is None:
                raise ImageUnavailable(f"no detection {detection_id}")
            frame_id, box = det.frame_id, (det.x1, det.y1, det.x2, det.y2)
        return self._crop(frame_id, box, kind)

    def review_crop(self, event_id: int, kind: str) -> Encoded:
        """Crop of a reviewer-drawn (missed defect) box."""
        with self.factory() as db:
            event = db.get(ReviewEvent, event_id)
            if event is None or event.action != "missed":
                raise ImageUnavailable(f"no drawn box {event_id}")
            frame_id, box = event.frame_id, (event.x1, event.y1, event.x2, event.y2)
        return self._crop(frame_id, box, kind)  # type: ignore[arg-type]

    def _crop(self, frame_id: int, box: tuple[float, float, float, float], kind: str) -> Encoded:
        if kind not in CROP_KINDS:
            raise ImageUnavailable(f"no crop kind {kind!r}")
        with self._slots:
            pair = self._pair(frame_id)
            h, w = pair.frame.shape[:2]
            x1, y1, x2, y2 = crop_window(box, w, h)
            if kind == "frame":
                return encode(pair.frame[y1:y2, x1:x2])
            if pair.template is None:
                raise ImageUnavailable("this frame was inspected without a template")
            if kind == "template":
                return encode(pair.template[y1:y2, x1:x2])
            return encode(difference_heat(pair.frame[y1:y2, x1:x2], pair.template[y1:y2, x1:x2]))

    def _pair(self, frame_id: int) -> _Pair:
        with self._cache_lock:
            if frame_id in self._cache:
                self._cache.move_to_end(frame_id)
                return self._cache[frame_id]
        with self.factory() as db:
            frame = db.get(Frame, frame_id)
            if frame is None:
                raise ImageUnavailable(f"no frame {frame_id}")
            template = db.get(Template, frame.template_id) if frame.template_id is not None else None
            stored, shift = frame.stored_path, (frame.shift_x or 0.0, frame.shift_y or 0.0)
            template_path = template.path if template is not None else None
        image = decode(self.files.read(stored)[0])
        aligned = None
        if template_path is not None:
            reference = decode(self.files.read(template_path)[0])
            if reference.shape != image.shape:
                raise ImageUnavailable("the template's size differs from the frame's", 422)
            aligned = reference
            if abs(shift[0]) >= 1e-3 or abs(shift[1]) >= 1e-3:
                aligned = fill_uncovered(warp_template(reference, shift[0], shift[1]), image, shift[0], shift[1])
        pair = _Pair(image, aligned)
        with self._cache_lock:
            self._cache[frame_id] = pair
            while len(self._cache) > 1 and sum(p.nbytes for p in self._cache.values()) > CACHE_BYTES:
                self._cache.popitem(last=False)
        return pair


def _reduction(data: bytes, width: int) -> int:
    """The largest JPEG decode reduction that still yields at least ``width`` px (1 for other formats)."""
    dims = _dimensions(data)
    if dims is None or data[:2] != b"\xff\xd8":
        return 1
    for factor in (8, 4, 2):
        if dims[0] // factor >= width:
            return factor
    return 1
