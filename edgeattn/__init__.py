"""edgeattn: an export compiler for efficient attention at the edge."""

from __future__ import annotations

__version__ = "0.1.0"
