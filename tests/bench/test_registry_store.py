"""The store bench compares the clustered tables with the older rowid layout: its second store
must really be on that layout, and the stores the service opens afterwards on the new one."""

from __future__ import annotations

from pathlib import Path

from bench._registry_store import _rowid_store
from services.registry.store import ZoneStore
from services.registry.tables import TABLES, clustered


def test_the_comparison_store_keeps_rowid_tables_and_later_stores_are_clustered(tmp_path: Path) -> None:
    older = _rowid_store(tmp_path / "rowid.sqlite")
    assert {t: clustered(older._db, t) for t in TABLES} == {"zones": False, "detector_state": False}
    older.close()
    new = ZoneStore(tmp_path / "new.sqlite")
    assert {t: clustered(new._db, t) for t in TABLES} == {"zones": True, "detector_state": True}
    new.close()
