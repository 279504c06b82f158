"""Fixtures shared by every test folder (the helpers themselves live in tests/harness.py)."""

from harness import replay_factory, wait_for  # noqa: F401  (fixtures)
