"""New template versions from what the line actually produces.

``learn_template`` (``inspector templates learn``): the N most recent frames of a position judged OK (see
:func:`judged_ok`: inspected OK, or every detection reviewed as a false call), each registered onto the current template with the station's alignment settings and moved
into the template's pixel grid, then the per-pixel median. The median removes what differs between boards
(noise, dust, a defect the detector missed on one board) and keeps what they share: the board as the line
produces it today. The pixels a frame does not cover after its shift (a band of width |shift| at the border)
do not vote; a pixel no frame covers keeps the current template's value. The new version records which frames
it came from, their shifts and the version it was aligned to (``templates.provenance``).

``use_frame_as_template`` (the review page's "use this frame as template", ``templates add --from-frame``):
one stored frame, as captured, becomes the new version, provided it is judged OK.

A running daemon picks a new version up within ``templates.recheck_s`` (``TemplateStore.active``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session

from inspector.align import align_template, warp_template
from inspector.config import AlignmentConfig
from inspector.db.models import Frame, FrameReview, Template
from inspector.templates import TemplateError, TemplateStore, read_image_rgb

MIN_LEARN_FRAMES = 3  # a median of fewer frames is no median: one board's defect would become the template
SCAN_FACTOR = 5  # look at up to this many x N candidate rows (files purged, failed alignment, ...)
STRIP_ROWS = 64  # rows per median strip: bounds the float working set to N x 64 x W x 3


def judged_ok() -> ColumnElement[bool]:
    """Frames that show no defect: inspected OK (no detection kept) and no reviewer drew a missed defect on
    them, or defective but every detection reviewed as a false call (``frame_reviews.state == 'false_call'``,
    which also means no drawn box: ``inspector.review``)."""
    review = FrameReview.frame_id == Frame.id
    return or_(and_(Frame.status == "ok", ~exists().where(review, FrameReview.missed > 0)),
               and_(Frame.status == "defective", exists().where(review, FrameReview.state == "false_call")))


@dataclass
class LearnedTemplate:
    template: Template
    frames: list[int]
    shifts: list[tuple[float, float]]
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> frame ids
    reference: Template | None = None


def _ok_candidates(db: Session, camera_id: int, position: str, since: datetime | None, limit: int) -> list[Frame]:
    query = (select(Frame).where(Frame.camera_id == camera_id, Frame.position == position, judged_ok(),
                                 Frame.stored_path.is_not(None)))
    if since is not None:
        query = query.where(Frame.processed_at >= since)
    return list(db.scalars(query.order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(limit)))


def _uncovered(shape: tuple[int, ...], dx: float, dy: float) -> tuple[slice, slice]:
    """(columns, rows) an image moved by (dx, dy) has no data in: the band of width |shift| it moved away from."""
    h, w = shape[:2]
    bx, by = min(w, int(np.ceil(abs(dx)))), min(h, int(np.ceil(abs(dy))))
    cols = slice(0, bx) if dx > 0 else slice(w - bx, w)
    rows = slice(0, by) if dy > 0 else slice(h - by, h)
    return cols, rows


def median_of_aligned(frames: list[np.ndarray], shifts: list[tuple[float, float]], fallback: np.ndarray) -> np.ndarray:
    """Per-pixel median of ``frames`` (uint8 RGB, ``frame(x) ~= reference(x - shift)``) moved by ``-shift`` into
    the reference grid. Row strips keep the float working set at N x STRIP_ROWS x W x 3; uncovered pixels do
    not vote (NaN), and a pixel no frame covers takes ``fallback`` (the current template)."""
    moved = [warp_template(f, -dx, -dy) for f, (dx, dy) in zip(frames, shifts)]
    bands = [_uncovered(fallback.shape, -dx, -dy) for dx, dy in shifts]
    h = fallback.shape[0]
    out = np.empty_like(fallback)
    for r0 in range(0, h, STRIP_ROWS):
        r1 = min(h, r0 + STRIP_ROWS)
        stack = np.empty((len(moved), r1 - r0) + fallback.shape[1:], np.float32)
        for i, (m, (cols, rows)) in enumerate(zip(moved, bands)):
            stack[i] = m[r0:r1]
            stack[i][:, cols] = np.nan
            lo, hi = max(rows.start, r0), min(rows.stop, r1)
            if hi > lo:
                stack[i][lo - r0:hi - r0] = np.nan
        med = np.median(stack, axis=0)  # NaN wherever a frame has no data: redone below for those pixels
        partial = np.isnan(stack).any(axis=0)
        if partial.any():
            votes = stack[:, partial]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: replaced just below
                border = np.nanmedian(votes, axis=0)
            med[partial] = np.where(np.isnan(border), fallback[r0:r1][partial], border)
        out[r0:r1] = np.clip(np.rint(med), 0, 255).astype(np.uint8)
    return out


def learn_template(store: TemplateStore, alignment: AlignmentConfig, camera: str, position: str,
                   frames: int = 15, since: datetime | None = None, min_frames: int = MIN_LEARN_FRAMES,
                   by: str | None = None) -> LearnedTemplate:
    """Build and register a new template version of (camera, position); see the module docstring."""
    if frames < min_frames:
        raise TemplateError(f"templates learn: --frames {frames} is below the minimum of {min_frames}")
    cam_id = store._camera_id(camera)
    with store.factory() as db:
        reference_row = db.scalar(select(Template).where(Template.camera_id == cam_id, Template.position == position,
                                                         Template.active.is_(True)))
        candidates = _ok_candidates(db, cam_id, position, since, frames * SCAN_FACTOR)
    reference = read_image_rgb(Path(reference_row.path)) if reference_row is not None else None
    images: list[np.ndarray] = []
    used: list[int] = []
    shifts: list[tuple[float, float]] = []
    skipped: dict[str, list[int]] = {}
    for frame in candidates:
        if len(used) == frames:
            break
        path = Path(frame.stored_path or "")
        if not path.is_file():
            skipped.setdefault("image file gone", []).append(frame.id)
            continue
        try:
            image = read_image_rgb(path)
        except TemplateError:
            skipped.setdefault("unreadable image", []).append(frame.id)
            continue
        if reference is None:
            reference = image  # no version yet: the newest OK frame defines the grid
        if image.shape != reference.shape:
            skipped.setdefault("size differs from the template", []).append(frame.id)
            continue
        result = align_template(image, reference, alignment.method, alignment.max_shift, alignment.downscale)
        if not result.aligned:
            skipped.setdefault("alignment failed", []).append(frame.id)
            continue
        images.append(image)
        used.append(frame.id)
        shifts.append(result.shift)
    if len(used) < min_frames:
        details = "; ".join(f"{reason}: {len(ids)}" for reason, ids in skipped.items()) or "none found"
        raise TemplateError(
            f"templates learn: only {len(used)} usable OK frame(s) of {camera}/{position}"
            f"{' since ' + since.isoformat() if since else ''} (need {min_frames}; skipped: {details}). OK frames "
            "are kept only while retention.delete_ok_frames is false and processed_days has not purged them")
    assert reference is not None
    learned = median_of_aligned(images, shifts, reference)
    provenance = {"method": "median", "frames": used, "shifts": [[round(dx, 3), round(dy, 3)] for dx, dy in shifts],
                  "aligned_to": ({"template_id": reference_row.id, "version": reference_row.version}
                                 if reference_row is not None else None),
                  "alignment": alignment.method, "skipped": skipped, "by": by}
    row = store.add(camera, position, learned, source=f"learned: median of {len(used)} OK frames",
                    provenance=provenance)
    return LearnedTemplate(row, used, shifts, skipped, reference_row)


def use_frame_as_template(store: TemplateStore, frame_id: int, by: str | None = None,
                          position: str | None = None) -> Template:
    """The review page's "use this frame as template": the stored frame becomes the position's new version.
    Refused for a frame not judged OK (a defect baked into a template hides that defect from then on)."""
    with store.factory() as db:
        ok = db.scalar(select(Frame.id).where(Frame.id == frame_id, judged_ok()))
        status = db.scalar(select(Frame.status).where(Frame.id == frame_id))
    if status is None:
        raise TemplateError(f"no frame with id {frame_id}")
    if ok is None:
        why = {"ok": "a reviewer drew a missed defect on it",
               "defective": "it has detections not all reviewed as false calls"}.get(status, f"it is {status}")
        raise TemplateError(f"frame {frame_id} is not judged OK ({why}): only a frame without defects can become a "
                            "template (a defect baked into a template hides that defect from then on)")
    return store.add_from_frame(frame_id, position, by=by)
