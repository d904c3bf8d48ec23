"""Helpers of the review page tests: a station whose real daemon has processed synthetic frames, and clients."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from inspector.db.models import Frame
from inspector.web.app import create_app

BASE = "http://127.0.0.1"
WEB_CLASSES = ["defect", "scratch", "short"]


def station_overrides(**extra) -> dict:
    """The difference detector reporting under three class names (so 'wrong class' has choices)."""
    return {"detector": {"backend": "difference", "options": {"class_names": WEB_CLASSES}}, **extra}


def process_frames(daemon, frames, wait, count: int = 6) -> list[int]:
    """Drop ``count`` frames (every other one defective, both positions) and wait for their results."""
    drop = daemon.cfg.cameras[0].drop_folder
    for i in range(count):
        frames.drop(drop, f"P{i % 2:02d}_w{i:03d}.jpg", i % 2, defective=i % 2 == 1 or i == 0,
                    via_rename=bool(i % 3))
    wait(lambda: daemon.pipeline.counts["ok"] + daemon.pipeline.counts["defective"] >= count and daemon.wait_idle(0.1),
         timeout=30)
    with daemon.factory() as db:
        return list(db.scalars(select(Frame.id).order_by(Frame.id)))


def client(cfg, login_required: bool = False, base_url: str = BASE) -> TestClient:
    return TestClient(create_app(cfg, login_required=login_required), base_url=base_url)


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match, "page carries no CSRF token"
    return match.group(1)


def same_site(token: str) -> dict[str, str]:
    """Headers a browser sends with the page's own fetch()."""
    return {"X-CSRF-Token": token, "Origin": BASE, "Sec-Fetch-Site": "same-origin"}


def read_png(data: bytes):
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not an image"
    return image


def stored_image(path: str | Path):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {path}"
    return image
