#!/usr/bin/env python3
"""Run one command inside a throwaway QEMU VM whose kernel has kernel TLS (kTLS).

Theory of operation
-------------------
The host kernel may lack CONFIG_TLS (setsockopt(TCP_ULP, "tls") -> ENOENT), and
KVM may be unusable (nested virtualisation), so we boot a stock Debian kernel
under QEMU's TCG emulator:

1. Kernel: ``apt-get download linux-image-<ver>-amd64`` (the package that the
   ``linux-image-amd64`` meta-package points at), ``dpkg-deb -x`` it into a cache
   dir and ``depmod -b`` it.  Cached, so this happens once (~5 s).
2. Initramfs: a tiny cpio (written here in pure Python): static busybox, the
   few modules needed to mount the host's root over virtio-9p (virtio_pci,
   9pnet_virtio, 9p, overlay, virtio_rng), and an /init script.
3. Boot: ``qemu-system-x86_64 -accel tcg`` with ``-kernel``/``-initrd``.  /init
   mounts the host's ``/`` read-only via 9p, puts a tmpfs overlay on top (so
   the guest can write anywhere, nothing reaches the host), bind-mounts the
   extracted modules at /lib/modules/<ver>, brings up ``lo``, mounts a second
   (writable) 9p share holding the per-run files, then switch_root's into it.
4. Stage 2 (a shell script written per run): ``modprobe tls``, cd to the
   caller's cwd, export the caller's environment, run the command with stdout
   and stderr going to the serial console and to a file, write the exit code,
   ``poweroff -f``.

The command therefore sees the same files, Python, venv and packages as the
host -- only the kernel differs.

Usage::

    python3 tools/ktlsvm.py -- python3 -m pytest -q tests/test_ktls.py
    python3 tools/ktlsvm.py --prepare-only      # download/cache the kernel
    python3 tools/ktlsvm.py -v -- uname -a       # show the guest boot log too

Exit status: the command's own exit status; 124 when the VM ran past
--timeout; 125 when the VM itself could not be prepared or booted (qemu,
busybox-static, kernel package missing ...).

Environment: KTLSVM_CACHE (cache dir, default ~/.cache/ktlsvm),
KTLSVM_KERNEL_PKG (e.g. linux-image-6.1.0-56-amd64), KTLSVM_KERNEL_DEB (a
local .deb to use instead of apt-get download).

Host packages (Debian 12): qemu-system-x86 busybox-static kmod (apt-get
install -y --no-install-recommends ...).  Inside the guest the command runs as
root with ``KTLSVM_GUEST=1`` exported.
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import os
import re
import secrets
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_TIMEOUT = 124
EXIT_INFRA = 125

# Modules needed before switch_root (loaded with insmod from the initramfs, in
# dependency order).  "tls" itself is loaded later with the real modprobe, so
# that its crypto dependencies (gcm, aes, chacha20poly1305...) autoload too.
INITRAMFS_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng"]

# Environment variables passed from the host into the guest.
PASS_ENV = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PYTHONHASHSEED",
    "PYTHONDONTWRITEBYTECODE",
    "PYENV_VERSION",
    "PYENV_ROOT",
    "PYTEST_ADDOPTS",
    "CI",
]

INIT_SCRIPT = r"""#!/bin/busybox sh
# ktlsvm stage 1 (runs from the initramfs as PID 1)
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "ktlsvm-init: $*"; echo "KTLSVM-INIT-FAILED"; poweroff -f; }
for m in $(cat /modules/load-order); do
    insmod "/modules/$m" || fail "insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower \
    || fail "mounting host root over 9p failed"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "overlay mount failed"
for d in proc sys dev run; do mkdir -p /newroot/$d; done
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/ktlsvm /newroot/lib/modules/KVER
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ktlsvm_run /newroot/run/ktlsvm \
    || fail "mounting the run dir over 9p failed"
mount -o bind /newroot/KMODDIR /newroot/lib/modules/KVER || fail "bind-mounting modules failed"
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
exec switch_root /newroot /bin/sh /run/ktlsvm/stage2.sh
"""

STAGE2_TEMPLATE = r"""#!/bin/sh
# ktlsvm stage 2 (PID 1 inside the host's root filesystem, overlaid)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BB=BUSYBOX
{ modprobe tls || $BB modprobe tls; } >/dev/null 2>&1 || echo "ktlsvm: modprobe tls failed" >/dev/console
echo 0 > /proc/sys/kernel/printk 2>/dev/null
ENV_EXPORTS
export KTLSVM_GUEST=1
cd CWD || { echo "ktlsvm: cannot cd to the working directory" >/dev/console; echo 125 > /run/ktlsvm/rc; $BB poweroff -f; }
echo "KTLSVM-BEGIN-NONCE" >/dev/console
{ (CMD) </dev/null 2>&1; echo $? > /run/ktlsvm/rc; } | $BB tee /run/ktlsvm/output >/dev/console
sync
echo "KTLSVM-END-NONCE" >/dev/console
$BB poweroff -f
"""


class VMError(RuntimeError):
    """The VM could not be prepared or booted (not a failure of the command)."""


@dataclass
class Kernel:
    version: str
    root: Path  # extracted package root (contains boot/ and lib/modules/)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def log(msg: str) -> None:
    print(f"ktlsvm: {msg}", file=sys.stderr, flush=True)


def need_tool(name: str, apt_pkg: str) -> str:
    path = shutil.which(name) or next(
        (
            p
            for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
            if os.access(p, os.X_OK)
        ),
        None,
    )
    if not path:
        raise VMError(f"'{name}' not found: apt-get install -y --no-install-recommends {apt_pkg}")
    return path


def is_static_elf(path: str) -> bool:
    """True if the ELF file at path has no PT_INTERP (i.e. is statically linked)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:
            return False
        (e_phoff,) = struct.unpack_from("<Q", hdr, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", hdr, 0x36)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    return all(struct.unpack_from("<I", ph, i * e_phentsize)[0] != 3 for i in range(e_phnum))


def find_busybox() -> str:
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if cand and os.path.exists(cand) and is_static_elf(cand):
            return cand
    raise VMError("a statically linked busybox is needed: apt-get install -y busybox-static")


def cache_dir(arg: str | None) -> Path:
    d = Path(arg or os.environ.get("KTLSVM_CACHE") or Path.home() / ".cache" / "ktlsvm")
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve_kernel_pkg() -> str:
    """Name of the kernel image package the linux-image-amd64 meta-package points at."""
    pkg = os.environ.get("KTLSVM_KERNEL_PKG")
    if pkg:
        return pkg
    apt_cache = need_tool("apt-cache", "apt")
    out = subprocess.run(
        [apt_cache, "depends", "linux-image-amd64"], capture_output=True, text=True
    )
    m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-amd64)\b", out.stdout)
    if not m:
        raise VMError(
            "cannot resolve the kernel package via 'apt-cache depends linux-image-amd64' "
            "(run 'apt-get update' first, or set KTLSVM_KERNEL_PKG / KTLSVM_KERNEL_DEB)\n"
            + out.stderr.strip()
        )
    return m.group(1)


def prepare_kernel(cache: Path) -> Kernel:
    """Download (once), extract and depmod the Debian kernel package; return it."""
    deb_env = os.environ.get("KTLSVM_KERNEL_DEB")
    if deb_env:
        deb = Path(deb_env).resolve()
        if not deb.is_file():
            raise VMError(f"KTLSVM_KERNEL_DEB={deb_env} does not exist")
        pkg = deb.name.split("_")[0]
    else:
        pkg = resolve_kernel_pkg()
        deb = None
    version = pkg.removeprefix("linux-image-").removesuffix("-unsigned")
    kroot = cache / pkg
    kernel = Kernel(version, kroot)
    if kernel.vmlinuz.is_file() and (kernel.moddir / "modules.dep").is_file():
        return kernel
    dpkg_deb = need_tool("dpkg-deb", "dpkg")
    depmod = need_tool("depmod", "kmod")
    if deb is None:
        apt_get = need_tool("apt-get", "apt")
        debdir = cache / "debs"
        debdir.mkdir(exist_ok=True)
        os.chmod(debdir, 0o777)  # lets apt's _apt user write there (avoids a warning)
        log(f"downloading {pkg} ...")
        r = subprocess.run(
            [apt_get, "download", "-q", pkg], cwd=debdir, capture_output=True, text=True
        )
        found = sorted(debdir.glob(f"{pkg}_*.deb"))
        if r.returncode != 0 or not found:
            raise VMError(
                f"'apt-get download {pkg}' failed (is 'apt-get update' done?):\n{r.stderr.strip()}"
            )
        deb = found[-1]
    log(f"extracting {deb.name} ...")
    tmp = Path(tempfile.mkdtemp(prefix=pkg + ".", dir=cache))
    subprocess.run([dpkg_deb, "-x", str(deb), str(tmp)], check=True)
    subprocess.run([depmod, "-b", str(tmp), version], check=True)
    if kroot.exists():
        shutil.rmtree(kroot)
    tmp.rename(kroot)
    if not deb_env:
        deb.unlink()  # ~70 MB; the extracted tree (~400 MB) is what is kept
    if not kernel.vmlinuz.is_file():
        raise VMError(f"{deb} contains no boot/vmlinuz-{version}")
    return kernel


def module_load_order(kernel: Kernel, names: list[str]) -> list[str]:
    """Module paths (relative to moddir) in an order insmod can load them."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[os.path.basename(mod).split(".ko")[0].replace("-", "_")] = mod
    builtin = set()
    bfile = kernel.moddir / "modules.builtin"
    if bfile.exists():
        builtin = {
            os.path.basename(name).split(".ko")[0].replace("-", "_")
            for name in bfile.read_text().split()
        }
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps[mod]:
            visit(d)
        order.append(mod)

    for n in names:
        n = n.replace("-", "_")
        if n in builtin:
            continue
        if n not in by_name:
            raise VMError(f"kernel {kernel.version} has no module {n}")
        visit(by_name[n])
    return order


class Cpio:
    """Minimal writer for the 'newc' cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nameb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0)
        )
        self.ino += 1
        self.buf.write(hdr.encode() + nameb)
        self.buf.write(b"\0" * (-(110 + len(nameb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(kernel: Kernel, cache: Path, busybox: str) -> Path:
    """Build (or reuse) the initramfs for this kernel; returns its path."""
    mods = module_load_order(kernel, INITRAMFS_MODULES)
    kmoddir = os.path.relpath(kernel.moddir.resolve(), "/")
    init = INIT_SCRIPT.replace("KVER", kernel.version).replace("KMODDIR", shlex.quote(kmoddir))
    bb = Path(busybox).read_bytes()
    key = repr((mods, init, len(bb), os.path.getmtime(busybox))).encode()
    out = cache / f"initramfs-{kernel.version}.cpio.gz"
    stamp = out.with_suffix(".key")
    if out.exists() and stamp.exists() and stamp.read_bytes() == key:
        return out
    c = Cpio()
    for d in ("bin", "dev", "modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", bb, 0o755)
    c.file("init", init.encode(), 0o755)
    names = []
    for m in mods:
        base, data = os.path.basename(m), (kernel.moddir / m).read_bytes()
        if base.endswith(".xz"):  # newer Debian kernels ship .ko.xz; busybox insmod wants .ko
            base, data = base[:-3], lzma.decompress(data)
        elif not base.endswith(".ko"):
            raise VMError(f"cannot load compressed module {base} from the initramfs")
        c.file(f"modules/{base}", data)
        names.append(base)
    c.file("modules/load-order", ("\n".join(names) + "\n").encode())
    out.write_bytes(gzip.compress(c.finish(), compresslevel=1))
    stamp.write_bytes(key)
    return out


def stage2_script(cmd: list[str], cwd: str, env: dict[str, str], busybox: str, nonce: str) -> str:
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    return (
        STAGE2_TEMPLATE.replace("BUSYBOX", shlex.quote(busybox))
        .replace("ENV_EXPORTS", exports)
        .replace("CWD", shlex.quote(cwd))
        .replace("NONCE", nonce)
        .replace("CMD", shlex.join(cmd))
    )


def qemu_argv(
    qemu: str, kernel: Kernel, initrd: Path, rundir: Path, memory: str, smp: int, accel: str
) -> list[str]:
    accel_opt = "tcg,thread=multi" if accel == "tcg" and smp > 1 else accel
    return [
        qemu,
        "-accel",
        accel_opt,
        "-cpu",
        "max",
        "-smp",
        str(smp),
        "-m",
        memory,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off tsc=reliable",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={rundir},mount_tag=ktlsvm_run,security_model=none",
        "-device",
        "virtio-rng-pci",
    ]


def run_in_vm(
    cmd: list[str],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    cache: str | None = None,
    timeout: float = 900,
    memory: str = "1024",
    smp: int | None = None,
    accel: str = "tcg",
    verbose: bool = False,
    stream=sys.stdout,
) -> tuple[int, str]:
    """Boot the VM, run cmd in it, return (exit status, combined stdout+stderr).

    Output is also streamed to `stream` (None: not streamed) as it arrives.
    Raises VMError when the VM cannot be prepared or does not report an exit status.
    """
    qemu = need_tool("qemu-system-x86_64", "qemu-system-x86")
    busybox = find_busybox()
    cdir = cache_dir(cache)
    kernel = prepare_kernel(cdir)
    initrd = build_initramfs(kernel, cdir, busybox)
    cwd = os.path.abspath(cwd or os.getcwd())
    genv = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    genv.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    genv.update(env or {})
    smp = smp or min(os.cpu_count() or 1, 4)
    nonce = secrets.token_hex(6)
    with tempfile.TemporaryDirectory(prefix="run.", dir=cdir) as rundir_s:
        rundir = Path(rundir_s)
        (rundir / "stage2.sh").write_text(stage2_script(cmd, cwd, genv, busybox, nonce))
        argv = qemu_argv(qemu, kernel, initrd, rundir, memory, smp, accel)
        if verbose:
            log(" ".join(shlex.quote(a) for a in argv))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        console: list[str] = []
        state = {"in_cmd": False, "t_begin": None}

        def pump() -> None:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
                console.append(line)
                if f"KTLSVM-BEGIN-{nonce}" in line:
                    state["in_cmd"], state["t_begin"] = True, time.monotonic()
                    continue
                if f"KTLSVM-END-{nonce}" in line:
                    state["in_cmd"] = False
                    continue
                if stream is not None and (state["in_cmd"] or verbose):
                    stream.write(line)
                    stream.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            log(f"timed out after {timeout:.0f} s; last console lines:\n" + "".join(console[-20:]))
            return EXIT_TIMEOUT, ""
        reader.join(5)
        t1 = time.monotonic()
        rc_file, out_file = rundir / "rc", rundir / "output"
        if not rc_file.exists() or not rc_file.read_text().strip():
            raise VMError(
                f"the VM exited (qemu status {proc.returncode}) without reporting the "
                "command's exit status; console:\n" + "".join(console[-40:])
            )
        rc = int(rc_file.read_text().strip())
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
        if verbose or os.environ.get("KTLSVM_TIMINGS"):
            boot = (state["t_begin"] or t1) - t0
            log(
                f"boot {boot:.1f} s, command {t1 - (state['t_begin'] or t1):.1f} s, total {t1 - t0:.1f} s"
            )
        return rc, output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] [--] COMMAND [ARG...]",
    )
    p.add_argument("--cache", help="cache dir (default: $KTLSVM_CACHE or ~/.cache/ktlsvm)")
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds before the VM is killed (900)"
    )
    p.add_argument("--memory", default="1024", help="guest memory in MiB (1024)")
    p.add_argument("--smp", type=int, default=None, help="guest CPUs (default: host CPUs, max 4)")
    p.add_argument("--accel", default="tcg", help="qemu accelerator: tcg (default) or kvm")
    p.add_argument("--cwd", help="working directory for the command (default: current)")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the command (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show qemu argv, boot log, timings")
    p.add_argument(
        "--prepare-only", action="store_true", help="fetch the kernel, build the initramfs, exit"
    )
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    try:
        if a.prepare_only:
            need_tool("qemu-system-x86_64", "qemu-system-x86")
            cdir = cache_dir(a.cache)
            k = prepare_kernel(cdir)
            print(build_initramfs(k, cdir, find_busybox()))
            print(k.vmlinuz)
            return 0
        if not cmd:
            p.error("no command given")
        env = dict(e.split("=", 1) for e in a.env)
        rc, _ = run_in_vm(
            cmd,
            cwd=a.cwd,
            env=env,
            cache=a.cache,
            timeout=a.timeout,
            memory=a.memory,
            smp=a.smp,
            accel=a.accel,
            verbose=a.verbose,
        )
        return rc
    except VMError as e:
        log(f"error: {e}")
        return EXIT_INFRA
    except subprocess.CalledProcessError as e:
        log(f"error: {e}")
        return EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
