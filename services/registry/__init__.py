"""registry: liquidity zones per timeframe, created, touched and expired on a timing wheel."""
