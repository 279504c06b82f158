"""tb: a trade balancer for Polygon.io / Massive websocket feeds."""

__version__ = "0.1.0"
