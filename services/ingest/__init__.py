"""ingest: Polymarket's CLOB market channel over a pool of WebSocket connections, normalized."""

from shared.compiled import guard

guard(__name__)  # the compiled core only if built from these sources (shared/compiled.py)
