"""The fuzz tests share their targets with tools/fuzz.py: make tests/fuzz importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
