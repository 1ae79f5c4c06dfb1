"""``python -m services.ingest --config FILE``."""

from __future__ import annotations

from services.ingest.config import IngestConfig
from services.ingest.service import main
from shared.runner import run

if __name__ == "__main__":
    raise SystemExit(run("ingest", IngestConfig, main))
