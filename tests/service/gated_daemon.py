"""Helper process for the watchdog/supervision tests (not a test module): the real daemon, run exactly as
``inspector run`` runs it (``Daemon.run_forever``), with a real difference backend whose ``detect`` blocks while
a gate file exists: it hangs the way a stalled GPU runtime does, and resumes when the file is removed. A frame
whose first pixel is POISON hangs it for good (a frame that wedges the runtime every time).

Usage: python gated_daemon.py GATE_FILE CONFIG
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from inspector.backends.base import Detection
from inspector.backends.difference import DifferenceBackend
from inspector.config import load_station_config
from inspector.daemon import Daemon
from inspector.logging_json import configure_logging


POISON = (1, 2, 3)


class GatedDifferenceBackend(DifferenceBackend):
    def __init__(self, gate: Path) -> None:
        super().__init__()
        self.gate = gate

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        poisoned = any(tuple(int(v) for v in img[0, 0]) == POISON for img in images)
        while self.gate.exists() or poisoned:
            time.sleep(0.01)
        return super().detect(images, templates)


def main(argv: list[str]) -> int:
    gate, config = Path(argv[0]), Path(argv[1])
    configure_logging()
    cfg = load_station_config(config)
    return Daemon(cfg, config_path=config, backend_factory=lambda: GatedDifferenceBackend(gate)).run_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
