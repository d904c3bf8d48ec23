"""The unit files pass ``systemd-analyze verify`` (with ExecStart pointed at a binary that exists here) and
carry the settings operations relies on."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "rddn-inspector@.service"
GPU_DROPIN = ROOT / "systemd" / "rddn-inspector@.service.d" / "gpu.conf"
INSTALLED_EXEC = "/opt/rddn-inspector/.venv/bin/inspector"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


def _settings(path: Path) -> dict[str, list[str]]:
    """key -> values (systemd allows repeated keys), comments and section headers dropped."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _staged(tmp_path: Path, exec_path: str, dropin: bool = True) -> Path:
    """Copy the unit (and drop-in) into tmp with ExecStart substituted, as the lead asked."""
    text = UNIT.read_text().replace(INSTALLED_EXEC, exec_path)
    (tmp_path / UNIT.name).write_text(text)
    if dropin:
        (tmp_path / GPU_DROPIN.parent.name).mkdir()
        shutil.copy(GPU_DROPIN, tmp_path / GPU_DROPIN.parent.name / GPU_DROPIN.name)
    return tmp_path / "rddn-inspector@line1.service"


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"./{unit.name}"], cwd=unit.parent, capture_output=True, text=True, timeout=60
    )


@needs_analyze
def test_unit_and_gpu_dropin_verify_cleanly(tmp_path: Path) -> None:
    result = _verify(_staged(tmp_path, "/bin/true"))
    assert result.returncode == 0, result.stderr
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "rddn-inspector" in line]
    assert ours == [], "systemd-analyze warnings about our units:\n" + "\n".join(ours)


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """Guard that the check above can fail: a missing binary and an unknown key are reported."""
    unit = _staged(tmp_path, "/nonexistent/inspector", dropin=False)
    (tmp_path / UNIT.name).write_text((tmp_path / UNIT.name).read_text() + "\n[Service]\nBogusKey=1\n")
    result = _verify(unit)
    assert result.returncode != 0
    assert "BogusKey" in result.stderr and "/nonexistent/inspector" in result.stderr


def test_unit_has_the_service_contract() -> None:
    s = _settings(UNIT)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"]
    assert s["WatchdogSec"] and s["TimeoutStartSec"] == ["15min"]
    assert s["ExecStart"] == [f"{INSTALLED_EXEC} run --config /etc/rddn-inspector/%i.yaml"]
    assert s["StateDirectory"] == ["rddn-inspector/%i"] and s["LogsDirectory"] == ["rddn-inspector/%i"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["NoNewPrivileges"] == ["yes"] and s["User"] == ["rddn-inspector"]
    assert any(v.startswith("-/srv/rddn/") for v in s["ReadWritePaths"])
    # the GPU must stay reachable: nothing may hide /dev
    assert "PrivateDevices" not in s and "DevicePolicy" not in s


def test_gpu_dropin_keeps_devices_visible() -> None:
    s = _settings(GPU_DROPIN)
    assert "video" in s["SupplementaryGroups"][0]
    assert "PrivateDevices" not in s and "DevicePolicy" not in s


def test_unit_fd_limit_holds_a_station_at_its_connection_caps() -> None:
    from inspector.config import parse_station_config
    from inspector.resources import RECOMMENDED_FDS, fd_budget

    [limit] = _settings(UNIT)["LimitNOFILE"]
    cfg = parse_station_config({"station": "s", "cameras": [{"id": "c", "drop_folder": "/srv/rddn/s/drop"}],
                                "workers": 16, "metrics": {"port": 9464}}, "<unit>", ROOT)
    assert int(limit) >= max(RECOMMENDED_FDS, 4 * fd_budget(cfg).required)
