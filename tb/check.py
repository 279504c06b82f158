"""`tb check`: what this machine offers tb, and the command that would enable what is missing.

Each probe asks the kernel directly (a setsockopt, a syscall, a /proc file) rather than guessing
from version numbers, and returns one `Finding`: a name, whether it is on, what was seen, and the
command that would turn it on. Nothing here changes the machine.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import gzip
import json
import os
import platform
import socket
import ssl
import struct
import sys
from dataclasses import asdict, dataclass

from tb.exitcode import ExitCode

__all__ = ["Finding", "probe_all", "add_parser", "main"]

TB_RCVBUF = 4 << 20  # what tb.transport asks for (SO_RCVBUF)
CAP_SYS_RESOURCE = 24
CAP_NET_ADMIN = 12


@dataclass(slots=True)
class Finding:
    name: str
    on: bool
    detail: str
    fix: str = ""  # the command (or step) that would enable it; "" when nothing to do
    required: bool = False  # tb cannot run without it


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _has_cap(bit: int) -> bool:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return os.geteuid() == 0


def _kernel_config(option: str) -> str | None:
    """'y', 'm', 'n' (not set) or None (config not readable)."""
    text = None
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        text = _read(f"/boot/config-{platform.release()}")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1]
        if line == f"# {option} is not set":
            return "n"
    return "n"


def _tls_module_file() -> str | None:
    base = f"/lib/modules/{platform.release()}/kernel/net/tls"
    for name in ("tls.ko", "tls.ko.xz", "tls.ko.zst", "tls.ko.gz"):
        if os.path.exists(f"{base}/{name}"):
            return f"{base}/{name}"
    return None


def _ktls_ciphers() -> list[str]:
    """Versions x ciphers the kernel accepts for TLS_RX, probed on a loopback TCP pair."""
    from tb.transport import ktls

    found = []
    versions = (("TLS1.2", ktls.TLS_1_2_VERSION), ("TLS1.3", ktls.TLS_1_3_VERSION))
    sizes = {  # struct tls12_crypto_info_*: iv, key, salt, rec_seq after the 4-byte header
        ktls.CIPHER_AES_GCM_128: 8 + 16 + 4 + 8,
        ktls.CIPHER_AES_GCM_256: 8 + 32 + 4 + 8,
        ktls.CIPHER_CHACHA20_POLY1305: 12 + 32 + 8,
    }
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        for vname, version in versions:
            for cipher, size in sizes.items():
                with socket.create_connection(lsock.getsockname()) as c:
                    peer, _ = lsock.accept()
                    with peer:
                        try:
                            c.setsockopt(socket.SOL_TCP, ktls.TCP_ULP, b"tls")
                            info = struct.pack("=HH", version, cipher) + bytes(size)
                            c.setsockopt(ktls.SOL_TLS, ktls.TLS_RX, info)
                        except OSError:
                            continue
                        found.append(f"{vname} {ktls.CIPHER_NAMES[cipher]}")
    return found


def probe_ktls() -> Finding:
    from tb.transport import ktls

    missing = ktls.kernel_missing()
    if missing is None:
        try:
            ciphers = _ktls_ciphers()
        except OSError as exc:
            ciphers = []
            missing = f"loopback probe failed: {exc}"
        if ciphers:
            openssl = ssl.OPENSSL_VERSION
            return Finding(
                "kTLS", True, f"TCP_ULP tls works; RX offload for {', '.join(ciphers)}; {openssl}"
            )
        missing = missing or "the tls ULP is there but accepted no cipher"
    config = _kernel_config("CONFIG_TLS")
    modfile = _tls_module_file()
    loaded = os.path.isdir("/sys/module/tls")
    if config == "n" or (config is None and not modfile and not loaded):
        seen = "CONFIG_TLS is not set" if config == "n" else "no tls module for this kernel"
        fix = (
            "boot a kernel with CONFIG_TLS=m (e.g. Debian's linux-image-amd64), then modprobe "
            "tls; to test here: python3 tools/ktlsvm.py -- python3 -m pytest -m ktls"
        )
        return Finding("kTLS", False, f"{seen} ({platform.release()}); TLS is userspace", fix)
    if not loaded:
        where = modfile or "module not found under /lib/modules"
        return Finding("kTLS", False, f"tls module not loaded ({where}); {missing}", "modprobe tls")
    return Finding("kTLS", False, missing, "modprobe tls")


def probe_io_uring() -> Finding:
    disabled = _read("/proc/sys/kernel/io_uring_disabled")
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(425, ctypes.c_uint(4), params)  # io_uring_setup (x86-64, arm64: 425)
    err = ctypes.get_errno()
    if fd >= 0:
        os.close(fd)
        kernel = "io_uring_setup works"
    else:
        why = errno.errorcode.get(err, str(err))
        fix = "sysctl -w kernel.io_uring_disabled=0" if disabled not in (None, "0") else ""
        fix = fix or "a kernel with CONFIG_IO_URING=y (and no seccomp filter blocking it)"
        return Finding("io_uring", False, f"io_uring_setup fails: {why}; epoll is used", fix)
    try:
        from importlib.metadata import version

        libver = version("liburing")
    except Exception:
        return Finding(
            "io_uring",
            False,
            f"{kernel}, but the liburing package is not installed; epoll is used",
            "pip install 'tb[uring]'",
        )
    flags = _read("/proc/cpuinfo") or ""
    if libver.startswith("2026") and " avx512f" not in flags:
        return Finding(
            "io_uring",
            False,
            f"{kernel}; liburing {libver} wheels need AVX-512, which this CPU lacks (SIGILL)",
            "pip install 'liburing==2024.5.3' (builds from source)",
        )
    from tb.loop import available_loops

    why = available_loops().get("uring", "")
    if why:
        return Finding(
            "io_uring", False, f"{kernel}, but {why}; epoll is used", "pip install 'tb[uring]'"
        )
    return Finding("io_uring", True, f"{kernel}; liburing {libver} (tb run --loop uring)")


def probe_pipes() -> Finding:
    text = _read("/proc/sys/fs/pipe-max-size")
    if text is None:
        return Finding("pipes", False, "/proc/sys/fs/pipe-max-size unreadable", "")
    size = int(text)
    raise_ok = _has_cap(CAP_SYS_RESOURCE)
    detail = f"pipe-max-size {size >> 10} KiB"
    if raise_ok:
        detail += "; tb may go past it (CAP_SYS_RESOURCE)"
    else:
        detail += "; tb cannot go past it (no root/CAP_SYS_RESOURCE)"
    want = 16 << 20
    if size >= want or raise_ok:
        return Finding("pipes", True, detail)
    return Finding("pipes", size >= 1 << 20, detail, f"sysctl -w fs.pipe-max-size={want} (as root)")


def probe_splice() -> Finding:
    from tb.pipes.writer import vmsplice_problem

    problem = vmsplice_problem()
    if not problem:
        return Finding("splice", True, "vmsplice into a pipe works: big batches are not copied")
    return Finding("splice", False, f"{problem}: tb copies every record into the pipes instead")


def probe_rmem() -> Finding:
    text = _read("/proc/sys/net/core/rmem_max")
    if text is None:
        return Finding("rmem_max", False, "/proc/sys/net/core/rmem_max unreadable")
    size = int(text)
    detail = f"net.core.rmem_max {size >> 10} KiB (tb asks for {TB_RCVBUF >> 20} MiB)"
    if size >= TB_RCVBUF:
        return Finding("rmem_max", True, detail)
    return Finding("rmem_max", False, detail, f"sysctl -w net.core.rmem_max={TB_RCVBUF}")


def probe_cpus() -> Finding:
    total = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    detail = f"{usable} usable of {total}: tb takes one, the worker gets the rest"
    fix = "" if usable >= 2 else "give the process 2+ CPUs (taskset / cgroup)"
    return Finding("cpus", usable >= 2, detail, fix)


def probe_slice() -> Finding:
    """Whether tb can ask for a short CPU time slice (tb run --sched-slice; Linux 6.12+)."""
    from tb.sched import DEFAULT_SLICE_US, request_slice  # (for tb check's own process only)

    why = request_slice(DEFAULT_SLICE_US)
    if why is None:
        return Finding(
            "slice",
            True,
            f"a {DEFAULT_SLICE_US} µs CPU time slice can be asked for:"
            " tb's wake-ups preempt at once",
        )
    return Finding(
        "slice",
        False,
        f"{why}: a wake-up of tb may wait for what else runs on its core",
        "a kernel of 6.12 or later, or a core of tb's own (taskset, cpuset)",
    )


def probe_platform() -> Finding:
    ok = sys.platform == "linux" and hasattr(__import__("select"), "epoll")
    detail = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    fix = "" if ok else "tb is Linux-only (epoll, pipes, prctl)"
    return Finding("platform", ok, detail + (", epoll" if ok else ""), fix, required=True)


def probe_all() -> list[Finding]:
    return [
        probe_platform(),
        probe_ktls(),
        probe_io_uring(),
        probe_pipes(),
        probe_splice(),
        probe_rmem(),
        probe_cpus(),
        probe_slice(),
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `tb check`."""
    p = subparsers.add_parser(
        "check",
        help="what this machine supports (kTLS, io_uring, pipe sizes) and how to enable the rest",
        description="Probe the kernel for tb's fast paths: kernel TLS (which versions and "
        "ciphers), io_uring, pipe and socket buffer limits, CPUs, a short CPU time slice. Each "
        "line that is off names the command that would turn it on. Changes nothing.",
        epilog="exit status: 0 tb can run here (fast paths or not), 1 it cannot",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    findings = probe_all()
    can_run = all(f.on for f in findings if f.required)
    fast = [f.name for f in findings if f.on and not f.required and f.name in ("kTLS", "io_uring")]
    if getattr(args, "json", False):
        out = {"can_run": can_run, "fast_paths": fast, "checks": [asdict(f) for f in findings]}
        print(json.dumps(out, indent=2))
        return ExitCode.OK if can_run else ExitCode.ERROR
    for f in findings:
        print(f"{f.name:9} {'on ' if f.on else 'off'}  {f.detail}")
        if f.fix:
            print(f"{'':9}      -> {f.fix}")
    on = ", ".join(fast) or "none"
    verdict = "tb can run here" if can_run else "tb cannot run here"
    tls = "kernel TLS" if "kTLS" in fast else "userspace TLS"
    loop = "epoll; --loop uring works" if "io_uring" in fast else "epoll"
    print(f"{verdict}; fast paths on: {on} (wss:// uses {tls} with --tls auto; loop: {loop})")
    return ExitCode.OK if can_run else ExitCode.ERROR
