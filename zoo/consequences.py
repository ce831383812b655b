"""Zoo cases where one fault produces several symptoms: the report must name the cause, not the company."""

from __future__ import annotations
