"""``inspector export-training``: the reviewed frames of a station as a training set for ``rddn train``.

What becomes truth, from the review log (``inspector.review``, derived state per frame):

- frames whose review is complete (``confirmed``, ``false_call``, ``corrected``): the reviewed defects are the
  boxes (confirmed detections, detections with the corrected class, boxes reviewers drew for missed defects);
  detections reviewed as false calls are left out, so a frame whose detections were all false calls is a
  *normal pair* (empty annotation): the negatives that teach the model what not to call;
- frames reviewed as defect-free (inspected OK, ``confirm`` on the frame) are normal pairs too;
- frames nobody reviewed, or reviewed only in part (``partial``: a detection without a verdict), are NOT
  exported: an unreviewed detection is the model's opinion, not truth, and leaving the rest of such a frame
  out would teach "background" where a defect may be. They are counted in ``export.json``
  (``not_exported``) so the reviewers know what is left to do.

Each exported frame is a pair: the image (PNG of the pixels the daemon decoded and inspected) and its template
(PNG of the template version the frame was inspected against, moved by the frame's recorded shift exactly as
the daemon aligned it: ``inspector.align.shifted_template``). Layout (DeepPCB, readable by
``training.data.deeppcb`` and, via ``coco.json``, by ``training.data.coco``)::

    DIR/trainval.txt                          "groupG/G/<id>.png groupG/G_not/<id>.txt" per pair
    DIR/classes.txt                           the model's class names, type 1 first
    DIR/groupG/G/<id>_test.png, <id>_temp.png
    DIR/groupG/G_not/<id>.txt                 "x1 y1 x2 y2 type" per defect (empty: normal pair)
    DIR/coco.json                             the same pairs: file_name, template_file_name, boxes [x, y, w, h]
    DIR/export.json                           what was exported, what was not and why, group -> camera/position

``<id>`` is the frame id (8 digits), G numbers the (camera, position) pairs in sorted order (``groups`` in
``export.json``), so ``data.val_groups`` can hold out a position. Class names map through the model's ``class_names`` (type i =
``class_names[i-1]``); a frame with a class the model does not know is skipped and listed. The directory is
written under a temporary name and renamed when complete: a failed export leaves no half dataset.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from inspector.align import shifted_template
from inspector.config import StationConfig
from inspector.db.models import Frame, FrameReview, ModelRecord, Template
from inspector.review import FrameReviewState, review_states
from inspector.templates import read_image_rgb

COMPLETE_STATES = ("confirmed", "false_call", "corrected")
LIST_FILE = "trainval.txt"
COCO_FILE = "coco.json"
MANIFEST_FILE = "export.json"
PAGE = 200  # frames per query page


class ExportError(ValueError):
    """The export cannot be made as asked (the message says why)."""


@dataclass
class ExportSummary:
    out: Path
    class_names: list[str]
    pairs: int = 0
    normals: int = 0
    boxes: Counter = field(default_factory=Counter)  # origin (confirmed | reclassified | missed) -> count
    per_class: Counter = field(default_factory=Counter)
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> frame ids
    not_exported: dict[str, int] = field(default_factory=dict)  # unreviewed / partial frames with detections
    groups: dict[str, dict[str, str]] = field(default_factory=dict)

    def skip(self, reason: str, frame_id: int) -> None:
        self.skipped.setdefault(reason, []).append(frame_id)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ExportError(f"cannot encode {path.name}")
    path.write_bytes(data.tobytes())


def _fmt(v: float) -> str:
    return repr(round(float(v), 2))


def export_class_names(db: Session, camera_ids: Sequence[int]) -> list[str]:
    """The class names of the model that inspected the station's most recent frame (what reviewers chose from)."""
    model_id = db.scalar(select(Frame.model_id).where(Frame.camera_id.in_(camera_ids), Frame.model_id.is_not(None))
                         .order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(1))
    record = db.get(ModelRecord, model_id) if model_id is not None else None
    if record is None or not record.class_names:
        raise ExportError("no inspected frame with a registered model: nothing to export")
    return list(record.class_names)


def _reviewed(query: Select, camera_ids: Sequence[int], since: datetime | None, until: datetime | None) -> Select:
    """Restrict ``query`` to the frames with a complete review in the time range."""
    query = (query.join(FrameReview, FrameReview.frame_id == Frame.id)
             .where(Frame.camera_id.in_(camera_ids), FrameReview.state.in_(COMPLETE_STATES)))
    if since is not None:
        query = query.where(Frame.processed_at >= since)
    if until is not None:
        query = query.where(Frame.processed_at < until)
    return query


def _reviewed_pages(factory: sessionmaker[Session], camera_ids: Sequence[int], since: datetime | None,
                    until: datetime | None) -> Iterator[tuple[list[Frame], dict[int, FrameReviewState]]]:
    """Frames with a complete review, in id order, a page at a time (bounded memory on a long history)."""
    last = 0
    while True:
        with factory() as db:
            query = _reviewed(select(Frame), camera_ids, since, until).where(Frame.id > last)
            frames = list(db.scalars(query.order_by(Frame.id).limit(PAGE)))
            if not frames:
                return
            states = review_states(db, frames)
        yield frames, states
        last = frames[-1].id


def _not_exported(db: Session, camera_ids: Sequence[int], since: datetime | None,
                  until: datetime | None) -> dict[str, int]:
    """Frames with detections that are not (completely) reviewed: what the reviewers still have to do."""
    query = (select(func.coalesce(FrameReview.state, "unreviewed"), func.count(Frame.id))
             .outerjoin(FrameReview, FrameReview.frame_id == Frame.id)
             .where(Frame.camera_id.in_(camera_ids), Frame.status == "defective",
                    func.coalesce(FrameReview.state, "unreviewed").in_(("unreviewed", "partial"))))
    if since is not None:
        query = query.where(Frame.processed_at >= since)
    if until is not None:
        query = query.where(Frame.processed_at < until)
    return {state: n for state, n in db.execute(query.group_by(func.coalesce(FrameReview.state, "unreviewed")))}


def export_training(cfg: StationConfig, factory: sessionmaker[Session], camera_ids: dict[str, int], out: Path,
                    since: datetime | None = None, until: datetime | None = None,
                    cameras: Sequence[str] | None = None) -> ExportSummary:
    """Write the station's reviewed frames under ``out`` (see the module docstring); returns what was written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty: choose a new --out (an export is never merged into "
                          "an older one)")
    names = list(cameras) if cameras else list(camera_ids)
    unknown = sorted(set(names) - set(camera_ids))
    if unknown:
        raise ExportError(f"station '{cfg.station}' has no camera(s) {unknown} (have {sorted(camera_ids)})")
    ids = [camera_ids[n] for n in names]
    camera_names = {camera_ids[n]: n for n in names}
    with factory() as db:
        class_names = export_class_names(db, ids)
        not_exported = _not_exported(db, ids, since, until)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _write(factory, ids, camera_names, class_names, work, since, until)
        summary.not_exported = not_exported
        _write_manifest(work, summary, cfg, since, until)
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary.out = out
    return summary


def _write(factory: sessionmaker[Session], camera_ids: Sequence[int], camera_names: dict[int, str],
           class_names: list[str], work: Path, since: datetime | None, until: datetime | None) -> ExportSummary:
    summary = ExportSummary(work, class_names)
    label_of = {name: i for i, name in enumerate(class_names, 1)}
    with factory() as db:  # groups numbered in (camera, position) order: the same positions, the same groups
        positions = db.execute(_reviewed(select(Frame.camera_id, Frame.position).distinct(), camera_ids, since,
                                         until)).all()
    order = sorted(positions, key=lambda cp: (camera_names[cp[0]], cp[1] or ""))
    groups = {(cam, pos or ""): i for i, (cam, pos) in enumerate(order, 1)}
    templates: dict[int, tuple[Template | None, np.ndarray | None]] = {}
    list_lines: list[str] = []
    coco_images: list[dict] = []
    coco_annotations: list[dict] = []
    for frames, states in _reviewed_pages(factory, camera_ids, since, until):
        for frame in frames:
            state = states[frame.id]
            unknown = sorted({t.class_name for t in state.truth} - set(label_of))
            if unknown:
                summary.skip(f"class(es) {', '.join(unknown)} not in the model's classes", frame.id)
                continue
            if frame.template_id is None:
                summary.skip("inspected without a template (a pair needs one)", frame.id)
                continue
            image_path = Path(frame.stored_path or "")
            if not frame.stored_path or not image_path.is_file():
                summary.skip("image file no longer stored (retention)", frame.id)
                continue
            image = cv2.imdecode(np.fromfile(str(image_path), np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                summary.skip("stored image unreadable", frame.id)
                continue
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            if frame.template_id not in templates:
                with factory() as db:
                    row = db.get(Template, frame.template_id)
                templates[frame.template_id] = (row, read_image_rgb(Path(row.path)) if row is not None
                                                and Path(row.path).is_file() else None)
            row, template = templates[frame.template_id]
            if template is None:
                summary.skip("template version file missing", frame.id)
                continue
            if template.shape != image.shape:
                summary.skip("template size differs from the image", frame.id)
                continue
            shift = (frame.shift_x or 0.0, frame.shift_y or 0.0)
            aligned = shifted_template(template, image, shift)
            g = f"{groups[(frame.camera_id, frame.position or '')]:05d}"
            stem, pair_dir, ann_dir = f"{frame.id:08d}", work / f"group{g}" / g, work / f"group{g}" / f"{g}_not"
            pair_dir.mkdir(parents=True, exist_ok=True)
            ann_dir.mkdir(parents=True, exist_ok=True)
            _write_png(pair_dir / f"{stem}_test.png", image)
            _write_png(pair_dir / f"{stem}_temp.png", aligned)
            truth = state.truth
            lines = []
            coco_id = len(coco_images) + 1
            for t in truth:
                x1, y1, x2, y2 = (round(float(v), 2) for v in t.box)
                lines.append(f"{_fmt(x1)} {_fmt(y1)} {_fmt(x2)} {_fmt(y2)} {label_of[t.class_name]}")
                coco_annotations.append({"id": len(coco_annotations) + 1, "image_id": coco_id,
                                         "category_id": label_of[t.class_name], "iscrowd": 0,
                                         "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                                         "area": round((x2 - x1) * (y2 - y1), 2), "origin": t.origin})
                summary.boxes[t.origin] += 1
                summary.per_class[t.class_name] += 1
            (ann_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            rel = f"group{g}/{g}"
            list_lines.append(f"{rel}/{stem}.png group{g}/{g}_not/{stem}.txt")
            coco_images.append({"id": coco_id, "file_name": f"{rel}/{stem}_test.png",
                                "template_file_name": f"{rel}/{stem}_temp.png",
                                "width": int(image.shape[1]), "height": int(image.shape[0]),
                                "frame_id": frame.id, "camera": camera_names[frame.camera_id],
                                "position": frame.position, "review": state.state,
                                "template_id": frame.template_id, "template_version": row.version if row else None,
                                "shift": [round(shift[0], 3), round(shift[1], 3)],
                                "processed_at": frame.processed_at.isoformat()})
            summary.pairs += 1
            summary.normals += int(not truth)
    (work / LIST_FILE).write_text("\n".join(list_lines) + ("\n" if list_lines else ""))
    (work / "classes.txt").write_text("".join(f"{n}\n" for n in class_names))
    coco = {"info": {"description": "rddn-inspector reviewed frames", "version": "1"},
            "images": coco_images, "annotations": coco_annotations,
            "categories": [{"id": i, "name": n} for n, i in label_of.items()]}
    (work / COCO_FILE).write_text(json.dumps(coco, indent=1))
    used = {line.split("/")[0] for line in list_lines}
    summary.groups = {f"group{g:05d}": {"camera": camera_names[cam], "position": pos}
                      for (cam, pos), g in groups.items() if f"group{g:05d}" in used}
    return summary


def _write_manifest(work: Path, s: ExportSummary, cfg: StationConfig, since: datetime | None,
                    until: datetime | None) -> None:
    manifest = {
        "station": cfg.station, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "class_names": s.class_names, "pairs": s.pairs, "normal_pairs": s.normals,
        "boxes": dict(s.boxes), "boxes_per_class": dict(s.per_class), "groups": s.groups,
        "skipped": s.skipped,
        "not_exported": {"rule": "frames with detections not (completely) reviewed are not training truth",
                         **s.not_exported},
        "files": {"list": LIST_FILE, "coco": COCO_FILE, "classes": "classes.txt"},
    }
    (work / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
