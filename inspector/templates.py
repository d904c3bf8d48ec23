"""Template store: per camera and position, versioned reference images (hash, created time, active flag) in the
database, files under the camera's template store. Adding a template deactivates the previous version of that
position; identical content re-added is a no-op (returns the active version)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inspector.config import StationConfig, check_path_name
from inspector.db.models import Camera, Frame, Template
from inspector.ingest import sha256_bytes


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class ActiveTemplate:
    id: int
    version: int
    sha256: str
    image: np.ndarray  # RGB uint8


def read_image_rgb(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise TemplateError(f"{path}: not a readable image ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise TemplateError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TemplateStore:
    def __init__(self, cfg: StationConfig, factory: sessionmaker[Session], camera_ids: dict[str, int],
                 recheck_s: float = 5.0) -> None:
        self.cfg = cfg
        self.factory = factory
        self.camera_ids = camera_ids
        self._cache: dict[tuple[str, str], tuple[ActiveTemplate | None, float]] = {}
        self.recheck_s = recheck_s
        self._lock = threading.Lock()

    def _camera_id(self, camera: str) -> int:
        if camera not in self.camera_ids:
            raise TemplateError(f"station '{self.cfg.station}' has no camera '{camera}' "
                                f"(have {sorted(self.camera_ids)})")
        return self.camera_ids[camera]

    def add(self, camera: str, position: str, image: np.ndarray | Path, source: str | None = None,
            provenance: dict | None = None) -> Template:
        """Register a new active version of (camera, position) from an RGB array or an image file.

        ``source`` is the one-line description ``templates list`` shows, ``provenance`` the structured record
        (``{"method": "median" | "frame" | "file" | "array", "frames": [...], ...}``) kept with the version."""
        cam_id = self._camera_id(camera)
        try:
            check_path_name("template position", position)  # it names a folder of the template store
        except ValueError as exc:
            raise TemplateError(str(exc)) from None
        if isinstance(image, (str, Path)):
            source = source or str(image)
            provenance = provenance or {"method": "file", "path": str(image)}
            image = read_image_rgb(Path(image))
        provenance = provenance or {"method": "array"}
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise TemplateError(f"template for {camera}/{position} must be HxWx3 uint8, got {image.shape} {image.dtype}")
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise TemplateError(f"cannot encode template for {camera}/{position}")
        data = png.tobytes()
        digest = sha256_bytes(data)
        with self.factory.begin() as session:
            rows = session.scalars(select(Template).where(Template.camera_id == cam_id, Template.position == position)
                                   .order_by(Template.version)).all()
            active = [r for r in rows if r.active]
            if active and active[-1].sha256 == digest:
                return active[-1]
            version = (rows[-1].version + 1) if rows else 1
            directory = self.cfg.template_dir(self.cfg.camera(camera)) / position
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"v{version:04d}_{digest[:12]}.png"
            path.write_bytes(data)
            session.execute(update(Template).where(Template.camera_id == cam_id, Template.position == position)
                            .values(active=False))
            row = Template(camera_id=cam_id, position=position, version=version, sha256=digest, path=str(path),
                           source=source, width=image.shape[1], height=image.shape[0], active=True,
                           provenance=provenance)
            session.add(row)
        self.invalidate()
        return row

    def add_from_frame(self, frame_id: int, position: str | None = None, by: str | None = None) -> Template:
        """Promote a stored frame, as captured, to the template of its position (``by``: who asked). Whether the
        frame is fit to be one is ``inspector.template_learning.use_frame_as_template``'s question."""
        with self.factory() as session:
            frame = session.get(Frame, frame_id)
            if frame is None:
                raise TemplateError(f"no frame with id {frame_id}")
            camera = session.get(Camera, frame.camera_id)
            path = frame.stored_path or frame.source_path
        if not path or not Path(path).is_file():
            raise TemplateError(f"frame {frame_id}: image file no longer available ({path})")
        pos = position or frame.position
        if not pos:
            raise TemplateError(f"frame {frame_id} has no position; pass one")
        return self.add(camera.name, pos, Path(path), source=f"frame:{frame_id}",
                        provenance={"method": "frame", "frames": [frame_id], "by": by})

    def list(self, camera: str | None = None, include_inactive: bool = True) -> list[tuple[str, Template]]:
        names = {v: k for k, v in self.camera_ids.items()}
        with self.factory() as session:
            query = select(Template).where(Template.camera_id.in_(list(names)))
            if camera is not None:
                query = query.where(Template.camera_id == self._camera_id(camera))
            if not include_inactive:
                query = query.where(Template.active.is_(True))
            rows = session.scalars(query.order_by(Template.camera_id, Template.position, Template.version)).all()
        return [(names[r.camera_id], r) for r in rows]

    def active(self, camera: str, position: str) -> ActiveTemplate | None:
        """The active template image of (camera, position), decoded once and cached. The cached choice is
        re-checked against the database every ``recheck_s`` (one indexed query), so a template added with
        ``inspector templates add`` while the daemon runs is used within seconds, no SIGHUP needed."""
        key = (camera, position)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[1] < self.recheck_s:
            return cached[0]
        cam_id = self._camera_id(camera)
        with self.factory() as session:
            row = session.scalar(select(Template).where(Template.camera_id == cam_id, Template.position == position,
                                                        Template.active.is_(True)))
        if row is None:
            found = None
        elif cached is not None and cached[0] is not None and cached[0].id == row.id:
            found = cached[0]
        else:
            found = ActiveTemplate(row.id, row.version, row.sha256, read_image_rgb(Path(row.path)))
        with self._lock:
            self._cache[key] = (found, now)
        return found

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
