"""Bars (candles) on event time, closed by a watermark: :class:`Bar`, :class:`BarBuilder`,
:class:`Watermark` (their semantics: services/registry/candles.py's doc).

They live with the registry's compiled core, whose detectors work on them on every tick (native
classes there); alerts and any other user import them from here.
"""

from services.registry.candles import Bar, BarBuilder, Watermark, bucket_start

__all__ = ["Bar", "BarBuilder", "Watermark", "bucket_start"]
