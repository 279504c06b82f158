"""The NATS tests' fixtures (tests/nats_harness.py); they need nats-py and nats-server."""

import pytest
from nats_harness import nats_factory, nats_server, nats_tls  # noqa: F401  (fixtures)

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")
