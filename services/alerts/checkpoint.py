"""WAL checkpoints of the SQLite store, in a thread of their own instead of on the event loop.

With ``journal_mode=WAL`` and ``synchronous=NORMAL`` a commit appends to the WAL without an
fsync; the fsyncs come with checkpoints (WAL -> database file), which SQLite otherwise runs inside
whichever commit crosses ``wal_autocheckpoint`` pages. On the service's loop that was a stall of
5-60 ms several times a second under load (an event-triggered alert waited behind it). The store
turns the automatic checkpoint off and this thread runs a PASSIVE one (never blocking the writer)
every ``every_s`` on its own connection; sqlite3 releases the GIL while it works. Durability is
the same: a committed transaction is in the WAL, which a restart reads.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("poolwire.alerts.store")

CATCH_UP_ROUNDS = 8
# If the rounds never find the WAL unchanged (commits between every two of them), past this many
# frames (16 MB) a RESTART round follows: it holds the writer for the few frames committed since
# the round before, and the next commit starts the WAL over (it grew to 185 MB in 30 s at 2 000
# symbols when a single PASSIVE round, which reports only its own snapshot, was taken as done).
RESTART_FRAMES = 4096


class Checkpointer:
    def __init__(self, path: str, every_s: float = 0.5, restart_frames: int = RESTART_FRAMES) -> None:
        self.path = path
        self.every_s = every_s
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=0.1, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.every_s):
                self.run_once(db)
        finally:
            db.close()

    def run_once(self, db: sqlite3.Connection) -> None:
        """Copy the WAL into the database, in rounds until one finds the WAL as the round before
        left it (nothing committed in between: every frame is copied, and the next commit starts
        the WAL over); a round with nothing new to copy costs no fsync. A checkpoint reports the
        frames of its own snapshot: a commit during it is not in the figures, hence the rounds."""
        last = -1
        for _ in range(CATCH_UP_ROUNDS):
            got = self._checkpoint(db, "PASSIVE")
            if got is None or got[0]:
                return
            if got[1] == last and got[2] >= got[1]:
                return
            last = got[1]
        if last > self.restart_frames:
            got = self._checkpoint(db, "RESTART")
            if got is not None and not got[0]:
                self.restarts += 1

    def _checkpoint(self, db: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
        """One checkpoint: (busy, frames in the WAL, frames copied back), None if it failed."""
        try:
            ((busy, frames, copied),) = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as exc:
            self.failures += 1
            log.warning(
                "store %s: WAL checkpoint failed (%s); tried again in %.1f s", self.path, exc, self.every_s
            )
            return None
        self.checkpoints += 1
        return int(busy), int(frames), int(copied)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
