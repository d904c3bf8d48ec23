"""The systemd unit's ``MemoryDenyWriteExecute=yes``, applied to a test process with seccomp (no systemd needed).

``apply()`` installs the filter systemd builds for it (src/shared/seccomp-util.c): ``mmap`` with
PROT_WRITE|PROT_EXEC, ``mprotect``/``pkey_mprotect`` with PROT_EXEC and ``shmat`` with SHM_EXEC fail with EPERM.
Used as ``python unit_sandbox.py SCRIPT ARGS``: the filter is installed, then SCRIPT runs in the same (now
restricted) process. x86-64 system call numbers.
"""
from __future__ import annotations

import ctypes
import errno
import platform
import runpy
import struct
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
NR = {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329, "shmat": 30}
SUPPORTED = platform.machine() == "x86_64"

_LD_W_ABS, _JEQ_K, _JSET_K, _AND_K, _RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
_NR_OFF, _ARCH_OFF = 0, 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little endian)


def program() -> list[tuple[int, int, int, int]]:
    ins: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, _ARCH_OFF), (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
                                            (_RET_K, 0, 0, _ALLOW)]
    ins += [(_LD_W_ABS, 0, 0, _NR_OFF), (_JEQ_K, 0, 4, NR["mmap"]), (_LD_W_ABS, 0, 0, _arg_lo(2)),
            (_AND_K, 0, 0, PROT_WRITE | PROT_EXEC), (_JEQ_K, 0, 1, PROT_WRITE | PROT_EXEC), (_RET_K, 0, 0, _EPERM)]
    for name in ("mprotect", "pkey_mprotect"):
        ins += [(_LD_W_ABS, 0, 0, _NR_OFF), (_JEQ_K, 0, 3, NR[name]), (_LD_W_ABS, 0, 0, _arg_lo(2)),
                (_JSET_K, 0, 1, PROT_EXEC), (_RET_K, 0, 0, _EPERM)]
    ins += [(_LD_W_ABS, 0, 0, _NR_OFF), (_JEQ_K, 0, 3, NR["shmat"]), (_LD_W_ABS, 0, 0, _arg_lo(2)),
            (_JSET_K, 0, 1, SHM_EXEC), (_RET_K, 0, 0, _EPERM)]
    return ins + [(_RET_K, 0, 0, _ALLOW)]


def apply() -> None:
    if not SUPPORTED:
        raise OSError(errno.ENOSYS, f"system call numbers known for x86_64 only, not {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    code = b"".join(struct.pack("<HBBI", *i) for i in program())
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.addressof(buf))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def probe() -> dict[str, int]:
    """errno of a writable+executable mmap and of an mprotect adding PROT_EXEC (0 = allowed): shows the filter."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    out: dict[str, int] = {}
    ptr = libc.mmap(None, 4096, 0x1 | PROT_WRITE | PROT_EXEC, 0x22, -1, 0)  # MAP_PRIVATE | MAP_ANONYMOUS
    out["mmap_wx"] = ctypes.get_errno() if ptr in (None, ctypes.c_void_p(-1).value) else 0
    ptr = libc.mmap(None, 4096, 0x1 | PROT_WRITE, 0x22, -1, 0)
    out["mprotect_x"] = ctypes.get_errno() if libc.mprotect(ctypes.c_void_p(ptr), 4096, 0x1 | PROT_EXEC) else 0
    return out


if __name__ == "__main__":
    apply()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
