#!/usr/bin/env python3
"""Coverage-guided fuzzing of tb's parsers: atheris when it is installed, else hypothesis.

Usage:
    python3 tools/fuzz.py TARGET [libFuzzer flags, e.g. -atheris_runs=N -max_total_time=S] [DIR...]
    python3 tools/fuzz.py TARGET --replay [FILE|DIR...]   # run inputs once, report, exit
    python3 tools/fuzz.py --list

TARGET is one of: ws, scan, handshake, session, router, spans, capture (the functions in
tests/fuzz/fuzz_targets.py; each docstring says how the input bytes are read). Without a DIR
the target's seed corpus tests/corpus/TARGET is used. libFuzzer writes new inputs into the
FIRST directory given, so fuzz with a scratch directory first and the seeds after it:

    python3 tools/fuzz.py ws -max_total_time=300 /tmp/fuzz-ws tests/corpus/ws

A crash (an invariant broken, or an exception outside the package's error family) is written
to ./crash-<sha1>; minimize it with `-minimize_crash=1 -runs=10000 crash-...`, copy it into
tests/corpus/TARGET/ and it becomes a regression test (tests/fuzz/test_corpus.py). Bugs already
reported are let through (fuzz_targets.KNOWN_BUGS); TB_FUZZ_STRICT=1 stops on them too.

atheris (pip install atheris: a binary wheel for CPython 3.11 on x86-64 Linux) is optional.
Without it the tool says so and runs the same target under hypothesis instead: random and
mutated-seed inputs, `-atheris_runs=N` / `-runs=N` examples (default 20000), shrinking what it
finds; no coverage guidance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "fuzz")]
NAMES = ("ws", "scan", "handshake", "session", "router", "spans", "capture")


def _inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return files


def replay(target, paths: list[str]) -> int:
    """Run each input once; print the failures; exit status 1 if any."""
    failed = 0
    for path in _inputs(paths):
        try:
            target(path.read_bytes())
        except Exception as exc:  # report every kind: that is the point
            failed += 1
            print(f"FAIL {path}: {type(exc).__name__}: {str(exc)[:400]}")
    print(f"{len(_inputs(paths))} inputs, {failed} failed")
    return 1 if failed else 0


def _runs(argv: list[str], default: int) -> int:
    for arg in argv:
        for flag in ("-atheris_runs=", "-runs="):
            if arg.startswith(flag):
                return int(arg[len(flag) :])
    return default


def with_hypothesis(name: str, target, argv: list[str], dirs: list[str]) -> int:
    """The fallback: hypothesis examples (random bytes and mutated seeds), shrunk on failure."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = [p.read_bytes() for p in _inputs(dirs)] or [b""]

    @st.composite
    def mutated(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.integers(0, 2))
            byte = draw(
                st.sampled_from([0x00, 0x22, 0x2C, 0x5C, 0x7D, 0x7E, 0x81, 0xFF])
                | st.integers(0, 255)
            )
            if op == 0 and at < len(data):
                data[at] = byte
            elif op == 1:
                data.insert(at, byte)
            elif at < len(data):
                del data[at]
        return bytes(data)

    runs = _runs(argv, 20000)
    found: list[bytes] = []

    @settings(
        max_examples=runs,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(st.one_of(mutated(), st.binary(max_size=2048)))
    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception:
            found[:] = [data]
            raise

    t0 = time.monotonic()
    try:
        run()
    except Exception as exc:
        crash = Path(f"crash-{hashlib.sha1(found[0]).hexdigest()}")
        crash.write_bytes(found[0])
        print(f"{name}: {type(exc).__name__}: {str(exc)[:400]}\ninput {found[0]!r:.300} -> {crash}")
        return 1
    print(f"{name}: {runs} hypothesis examples in {time.monotonic() - t0:.0f} s, no failure")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] not in NAMES and os.environ.get("TB_FUZZ_TARGET") in NAMES:
        argv = [os.environ["TB_FUZZ_TARGET"], *argv]  # libFuzzer re-running us (-merge, -fork)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--list":
        print("\n".join(NAMES))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in NAMES:
        print(f"tools/fuzz.py: unknown target {name!r}; choose one of {', '.join(NAMES)}")
        return 2
    logging.getLogger("tb").addHandler(logging.NullHandler())  # no log lines per input
    logging.getLogger("tb").propagate = False
    dirs = [a for a in rest if not a.startswith("-")]
    flags = [a for a in rest if a.startswith("-")]
    if "--replay" in flags:
        import fuzz_targets

        return replay(fuzz_targets.TARGETS[name], dirs or [str(ROOT / "tests" / "corpus" / name)])
    if not dirs:
        dirs = [str(ROOT / "tests" / "corpus" / name)]
    try:
        import atheris
    except ImportError:
        print(
            "tools/fuzz.py: atheris is not installed (pip install atheris); falling back to a "
            "hypothesis-driven random run (no coverage guidance)",
            file=sys.stderr,
        )
        import fuzz_targets

        return with_hypothesis(name, fuzz_targets.TARGETS[name], flags, dirs)
    with atheris.instrument_imports(include=["tb", "fuzz_targets"]):
        import fuzz_targets
    target = fuzz_targets.TARGETS[name]
    os.environ["TB_FUZZ_TARGET"] = name
    if not os.path.exists(dirs[0]):  # libFuzzer writes new inputs there, but will not create it
        os.makedirs(dirs[0])
        print(f"tools/fuzz.py: created {dirs[0]} for the new inputs", file=sys.stderr)
    atheris.Setup([sys.argv[0], *flags, *dirs], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
