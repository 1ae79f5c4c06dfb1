"""The AMM math's error, outside the compiled core (shared/compiled.py): mypyc cannot compile a
subclass of ArithmeticError."""

from __future__ import annotations


class MathError(ArithmeticError):
    """The contract would revert here (overflow, out-of-range tick or price)."""
