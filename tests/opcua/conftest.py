"""Fixtures of the OPC UA suite: the helpers (an independent asyncua client) live in ``opcua_client``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
