"""A seccomp filter for the sandboxed child: one process, one thread, signals to itself only.

Installed in the child after the fork and before any learner code. The filter makes these
system calls fail with ``EPERM``: creating processes or threads (``fork``, ``vfork``,
``clone``, ``clone3``), running programs (``execve``), tracing or reading other processes
(``ptrace``, ``process_vm_*``, ``pidfd_*``), new sessions and process groups, namespaces and
mounts, io_uring, BPF and perf events; and ``kill`` / ``tkill`` / ``tgkill`` unless aimed at
the child itself. So a submission cannot leave a process behind, hog more than one CPU,
signal its zygote or another process, or escape into a new session. Linux on x86-64 and
AArch64 only (:func:`install` says when it could not apply it).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

__all__ = ["install", "supported"]

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

# name: (x86-64 number, aarch64 number); None where the call does not exist
_DENY = {
    "fork": (57, None),
    "vfork": (58, None),
    "clone": (56, 220),
    "clone3": (435, 435),
    "execve": (59, 221),
    "execveat": (322, 281),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_open": (434, 434),
    "pidfd_send_signal": (424, 424),
    "pidfd_getfd": (438, 438),
    "setsid": (112, 157),
    "setpgid": (109, 154),
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "personality": (135, 92),
}
_SELF_ONLY = {"kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131)}
_ARCH = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1), "arm64": (0xC00000B7, 1)}


def supported() -> bool:
    """True on the platforms the filter is written for (Linux, x86-64 or AArch64)."""
    return sys.platform.startswith("linux") and platform.machine() in _ARCH


def _program(pid: int) -> bytes:
    audit_arch, col = _ARCH[platform.machine()]
    deny = sorted({nrs[col] for nrs in _DENY.values() if nrs[col] is not None})
    self_only = sorted({nrs[col] for nrs in _SELF_ONLY.values() if nrs[col] is not None})
    # Instructions as (code, jt, jf, k); jumps are relative, filled in below by label.
    prog: list[list] = [
        [_LD_W_ABS, 0, 0, 4],  # arch
        [_JEQ_K, 0, "deny", audit_arch],
        [_LD_W_ABS, 0, 0, 0],  # syscall number
    ]
    if col == 0:  # x32 system calls on x86-64 carry bit 30
        prog.append([_JGE_K, "deny", 0, 0x40000000])
    for nr in deny:
        prog.append([_JEQ_K, "deny", 0, nr])
    for nr in self_only:
        prog.append([_JEQ_K, "self", 0, nr])
    prog.append([_RET_K, 0, 0, _RET_ALLOW])
    labels = {"self": len(prog)}
    prog += [
        [_LD_W_ABS, 0, 0, 16],  # low 32 bits of the first argument (the target pid)
        [_JEQ_K, 0, "deny", pid],
        [_LD_W_ABS, 0, 0, 20],  # high 32 bits: 0 for a positive pid
        [_JEQ_K, "allow", "deny", 0],
    ]
    labels["allow"] = len(prog)
    prog.append([_RET_K, 0, 0, _RET_ALLOW])
    labels["deny"] = len(prog)
    prog.append([_RET_K, 0, 0, _RET_EPERM])
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def install() -> str | None:
    """Install the filter on the calling process (irreversible).

    Returns:
        None on success, else why not (unsupported platform, a kernel without seccomp).
    """
    if not supported():
        return f"no seccomp filter for {sys.platform}/{platform.machine()}"
    libc = ctypes.CDLL(None, use_errno=True)
    code = _program(os.getpid())
    buf = ctypes.create_string_buffer(code, len(code))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}"
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"seccomp filter refused: {os.strerror(ctypes.get_errno())}"
    return None
