"""Real training recipes (issue 11.3): healthy runs as practitioners write them, each with a broken twin."""

from __future__ import annotations
