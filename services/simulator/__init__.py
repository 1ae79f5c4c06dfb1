"""The outside world for demos and tests: Polymarket market channel + Gamma REST (and ExEx)."""
