"""Replay every input in tests/corpus/TARGET/ through its fuzz target (found cases stay tests).

Add a file by dropping an input there (tools/fuzz.py writes crashes as crash-<sha1>: give it a
name that says what it is). Inputs of bugs not yet fixed pass here because the targets let the
known bugs through (fuzz_targets.KNOWN_BUGS); test_known_bugs.py fails on them strictly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
CASES = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_every_target_has_a_corpus():
    assert {p.parent.name for p in CASES} == set(TARGETS)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_input(path):
    TARGETS[path.parent.name](path.read_bytes())
