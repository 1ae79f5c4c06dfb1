"""Imported by nobody on purpose: a worker that imported it (because a job named it) leaves a file."""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ.get("ALERTS_TEST_MARKER", "/nonexistent/marker")).write_text("imported\n")


def run(job: object) -> None:
    pass
