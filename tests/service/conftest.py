"""Fixtures of the service/fault suite; the helpers live in ``service_harness`` (importable from the tests)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_harness import BusListener, StationHarness  # noqa: E402


@pytest.fixture()
def station(tmp_path: Path) -> Iterator[Callable[..., StationHarness]]:
    """Factory fixture: ``station(**kwargs)`` builds a harness; every daemon it started is stopped afterwards."""
    made: list[StationHarness] = []

    def make(**kwargs: object) -> StationHarness:
        h = StationHarness(tmp_path / f"st{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield make
    for h in made:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(10)
        if h._factory is not None:
            h._factory.kw["bind"].dispose()


@pytest.fixture()
def bus_listener() -> Iterator[Callable[..., BusListener]]:
    made: list[BusListener] = []

    def make(endpoint: str, **kwargs: object) -> BusListener:
        listener = BusListener(endpoint, **kwargs)  # type: ignore[arg-type]
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()
