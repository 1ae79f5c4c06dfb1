"""registry: liquidity zones per timeframe, created, touched and expired on a timing wheel."""

from shared.compiled import guard

guard(__name__)  # the compiled core only if built from these sources (shared/compiled.py)
