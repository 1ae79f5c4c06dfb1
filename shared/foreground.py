"""Run a command as the terminal's foreground job, so Ctrl-C stops it and not its caller.

``make demo`` runs honcho. A Ctrl-C at the terminal signals the whole foreground process group,
make included, and make answers a SIGINT by dying of it ("Interrupt", status 130) even when honcho
then stops every service cleanly. Here the command gets a process group of its own and the terminal
(as a shell's job control does), so the keypress reaches only the command. Its status is passed on,
except that a stop asked for by a signal (honcho's 130 for SIGINT, 143 for SIGTERM) is a clean
stop: 0. Without a terminal, SIGINT and SIGTERM sent to this process are passed to the command.

    python -m shared.foreground honcho -f Procfile.demo start
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

# What a supervisor returns when a signal told it to stop (128 + the signal's number).
STOPPED_ON_REQUEST = {128 + signal.SIGINT, 128 + signal.SIGTERM}


@contextlib.contextmanager
def _terminal_to(pgid: int) -> Iterator[None]:
    """Give the controlling terminal's foreground to ``pgid`` for the block (if there is a terminal)."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    # a background process that sets the foreground is sent SIGTTOU: taking it back must not stop us
    previous_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        mine = os.tcgetpgrp(tty)
        os.tcsetpgrp(tty, pgid)
    except OSError:
        signal.signal(signal.SIGTTOU, previous_ttou)
        os.close(tty)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, mine)
        signal.signal(signal.SIGTTOU, previous_ttou)
        os.close(tty)


def run(argv: Sequence[str]) -> int:
    proc = subprocess.Popen(list(argv), process_group=0)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    with _terminal_to(proc.pid):
        rc = proc.wait()
    if rc in STOPPED_ON_REQUEST:
        return 0
    return 128 - rc if rc < 0 else rc


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m shared.foreground COMMAND [ARG...]")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
