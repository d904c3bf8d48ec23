"""The systemd unit lets the OPC UA server work: the address families it needs, and, when the unit restricts IP
addresses or socket binds (the bus hardening may), its default loopback endpoint and TCP port stay allowed."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from inspector.config import OpcUaConfig

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "rddn-inspector@.service"


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def opcua_blockers(unit: dict[str, list[str]]) -> list[str]:
    """What in the unit would stop the default OPC UA endpoint (empty: nothing)."""
    endpoint = urlsplit(OpcUaConfig().endpoint)
    problems = []
    families = " ".join(unit.get("RestrictAddressFamilies", ["AF_INET AF_INET6"])).split()
    if families and families[0].startswith("~"):
        problems += [f for f in ("AF_INET", "AF_INET6") if "~" + f in families or f in families[1:]]
    else:
        problems += [f for f in ("AF_INET", "AF_INET6") if f not in families]
    deny = " ".join(unit.get("IPAddressDeny", [])).split()
    allow = " ".join(unit.get("IPAddressAllow", [])).split()
    if ("any" in deny or "127.0.0.0/8" in deny) and not {"localhost", "127.0.0.0/8", "127.0.0.1", "any"} & set(allow):
        problems.append(f"IPAddressDeny={deny} without loopback in IPAddressAllow")
    binds_denied = " ".join(unit.get("SocketBindDeny", [])).split()
    binds_allowed = " ".join(unit.get("SocketBindAllow", [])).split()
    if "any" in binds_denied and not any(_allows_port(rule, endpoint.port or 0) for rule in binds_allowed):
        problems.append(f"SocketBindDeny=any without tcp:{endpoint.port} in SocketBindAllow")
    return problems


def _allows_port(rule: str, port: int) -> bool:
    spec = rule.split(":")
    if spec[0] in ("ipv4", "ipv6"):
        spec = spec[1:]
    if spec and spec[0] in ("tcp", "udp"):
        if spec[0] != "tcp":
            return False
        spec = spec[1:]
    if not spec or spec[0] == "any":
        return True
    low, _, high = spec[0].partition("-")
    return int(low) <= port <= int(high or low)


def test_the_unit_allows_the_opcua_server() -> None:
    assert opcua_blockers(settings(UNIT.read_text())) == []


def test_the_check_sees_what_would_block_it() -> None:
    """Guard that the check above can fail: each restriction that would stop the server is reported."""
    base = settings(UNIT.read_text())
    assert opcua_blockers({**base, "RestrictAddressFamilies": ["AF_UNIX AF_NETLINK"]}) == ["AF_INET", "AF_INET6"]
    assert opcua_blockers({**base, "RestrictAddressFamilies": ["~AF_INET6"]}) == ["AF_INET6"]
    assert opcua_blockers({**base, "IPAddressDeny": ["any"], "IPAddressAllow": []})
    assert not opcua_blockers({**base, "IPAddressDeny": ["any"], "IPAddressAllow": ["localhost"]})
    assert opcua_blockers({**base, "SocketBindDeny": ["any"], "SocketBindAllow": ["tcp:5556-5557"]})
    assert not opcua_blockers({**base, "SocketBindDeny": ["any"], "SocketBindAllow": ["tcp:5556-5557 tcp:4840"]})
