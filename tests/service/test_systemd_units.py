"""The unit files pass ``systemd-analyze verify`` (with ExecStart pointed at a binary that exists here), carry the
settings operations relies on, are confined to an exposure of at most 2.0 (``systemd-analyze security``), and
what they confine the daemon to is enough: ONNX Runtime inference under the unit's memory and system-call rules
(seccomp, as systemd applies them), and every system call the running daemon makes is in the unit's filter."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service_harness import wait_until
from unit_sandbox import SUPPORTED

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
    assert s["PrivateDevices"] == ["yes"] and s["MemoryDenyWriteExecute"] == ["yes"]
    assert s["IPAddressDeny"] == ["any"] and s["IPAddressAllow"] == ["localhost"]


def test_gpu_dropin_shows_only_the_nvidia_devices() -> None:
    s = _settings(GPU_DROPIN)
    assert "video" in s["SupplementaryGroups"][0]
    assert s["PrivateDevices"] == ["no"] and s["DevicePolicy"] == ["closed"]
    assert s["DeviceAllow"] == ["char-nvidia* rw"]


def test_unit_fd_limit_holds_a_station_at_its_connection_caps() -> None:
    from inspector.config import parse_station_config
    from inspector.resources import RECOMMENDED_FDS, fd_budget

    [limit] = _settings(UNIT)["LimitNOFILE"]
    cfg = parse_station_config({"station": "s", "cameras": [{"id": "c", "drop_folder": "/srv/rddn/s/drop"}],
                                "workers": 16, "metrics": {"port": 9464}}, "<unit>", ROOT)
    assert int(limit) >= max(RECOMMENDED_FDS, 4 * fd_budget(cfg).required)


def _exposure(unit: Path) -> tuple[float, str]:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"./{unit.name}"], cwd=unit.parent,
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1)), done.stdout


@needs_analyze
@pytest.mark.parametrize("dropin", [False, True], ids=["base", "gpu"])
def test_exposure_is_at_most_2(tmp_path: Path, dropin: bool) -> None:
    score, report = _exposure(_staged(tmp_path, "/bin/true", dropin=dropin))
    print(f"systemd-analyze security exposure ({'with' if dropin else 'without'} gpu.conf): {score}")
    failing = [line for line in report.splitlines() if line.startswith("✗")]
    assert score <= 2.0, "\n".join(failing)


SANDBOXED_INFERENCE = """
import json, sys
import numpy as np
from unit_sandbox import probe
restricted = probe()
from inspector.backends import load_backend
backend = load_backend("onnxruntime", sys.argv[1])
size = backend.metadata.preprocessing.input_height, backend.metadata.preprocessing.input_width
image = np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)
detections = [backend.detect([image], [image])[0] for _ in range(3)]
print(json.dumps({"restricted": restricted, "runs": len(detections)}))
"""


@pytest.mark.skipif(not SUPPORTED, reason="the seccomp rules are written with x86-64 system call numbers")
def test_onnx_runtime_infers_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes as the seccomp filter systemd installs: ONNX Runtime (CPU) still runs the shipped
    model (it, OpenCV, NumPy and CPython create no writable+executable memory) and says nothing on stderr."""
    script = tmp_path / "infer.py"
    script.write_text(SANDBOXED_INFERENCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "service")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "service" / "unit_sandbox.py"), str(script),
                           str(ROOT / "inspector" / "demo" / "model")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["restricted"] == {"mmap_wx": 1, "mprotect_x": 1}  # EPERM: the filter is on
    assert result["runs"] == 3 and done.stderr == ""


def _expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd syscall-filter group, nested groups expanded."""
    assert SYSTEMD_ANALYZE is not None
    seen = seen if seen is not None else set()
    out = subprocess.run([SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True,
                         timeout=60).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= _expand(item, seen)
        else:
            calls.add(item)
    return calls


def _unit_syscall_filter() -> tuple[set[str], set[str]]:
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in _settings(UNIT)["SystemCallFilter"]:
        target = denied if value.startswith("~") else allowed
        for group in value.lstrip("~").split():
            target |= _expand(group) if group.startswith("@") else {group}
    return allowed - denied, denied


@needs_analyze
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (apt-get install strace)")
def test_the_daemons_system_calls_are_in_the_units_filter(station, tmp_path: Path) -> None:
    """The real daemon under strace: start, frames (good and quarantined), SIGTERM. Every system call it made is
    allowed by the unit's SystemCallFilter (a refused one would fail with EPERM: libzmq, for one, aborts when its
    pthread_setschedparam is refused, which is why @resources stays allowed)."""
    allowed, denied = _unit_syscall_filter()
    assert "sched_setscheduler" in allowed and "inotify_add_watch" in allowed and "setuid" in denied
    trace = tmp_path / "strace.txt"
    st = station()
    st.register_templates()
    st.start(command=["strace", "-f", "-qq", "-c", "-o", str(trace), sys.executable, "-m", "inspector.cli", "run",
                      "--config"])
    for i in range(3):
        st.drop_frame("P1", f"s{i}", defective=i == 1, seed=i, via_rename=bool(i % 2))
    st.drop_bytes("P1_bad.png", b"not an image")
    wait_until(lambda: len(st.frames()) == 4, 60, what="the frames under strace")
    assert st.proc is not None
    children = Path(f"/proc/{st.proc.pid}/task/{st.proc.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
    assert st.proc.wait(60) == 0
    used = {line.split()[-1] for line in trace.read_text().splitlines()
            if re.match(r"^\s*\d+\.\d+\s", line) and line.split()[-1] != "total"}
    assert len(used) > 30, trace.read_text()
    # SQLite hands its WAL/journal files to the database owner with fchown only when running as root (the test
    # may be; the unit runs as rddn-inspector) and ignores a failure.
    root_only = {"fchown"} if os.geteuid() == 0 else set()
    outside = used - allowed - root_only
    assert outside == set(), f"system calls the unit would refuse: {sorted(outside)}"
