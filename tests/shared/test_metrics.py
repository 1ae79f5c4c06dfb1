"""shared.metrics: the collectors every service exports."""

from __future__ import annotations

import sqlite3

from shared.metrics import new_registry


def test_a_service_registry_exports_python_and_sqlite_heaps() -> None:
    registry = new_registry()
    blocks = registry.get_sample_value("poolwire_python_allocated_blocks")
    assert blocks is not None and blocks > 0
    kept = [object() for _ in range(50_000)]  # 50 000 live objects are 50 000 more blocks
    more = registry.get_sample_value("poolwire_python_allocated_blocks")
    assert more is not None and more >= blocks + 45_000
    del kept
    db = sqlite3.connect(":memory:")
    before = registry.get_sample_value("poolwire_sqlite_memory_bytes")
    assert before is not None  # sqlite3 is loaded in this process: its heap is read
    db.execute("CREATE TABLE t (x BLOB)")
    with db:
        db.executemany("INSERT INTO t VALUES (?)", ((bytes(200),) for _ in range(10_000)))
    after = registry.get_sample_value("poolwire_sqlite_memory_bytes")
    assert after is not None and after > before + 1_000_000  # ~2 MB of pages in its cache
    db.close()
