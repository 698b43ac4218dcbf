"""The processes a test started, found through /proc (psutil is not a
dependency), so that a test can kill exactly those and nothing else on a
shared machine.

Attribution is by session: a child started with ``start_new_session=True``
leads a session of its own (session id = its pid), which everything it starts
inherits unless that calls ``setsid`` itself, and which survives the leader's
death (orphans are re-parented, so parent links alone would lose them). A
process is named by its pid *and* start time, so a pid the kernel reused for
someone else's process after ours exited is never signalled.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    pid: int
    start_ticks: int  # /proc/PID/stat starttime: clock ticks after boot

    def is_alive(self) -> bool:
        """Running (not exited, not a zombie) and still the same process."""
        stat = _stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks and stat.state != "Z"


@dataclass(frozen=True)
class _Stat:
    state: str
    session: int
    start_ticks: int


def _stat(pid: int) -> _Stat | None:
    """Fields of /proc/PID/stat; None when the process is gone. The command
    name (field 2) is in parentheses and may hold spaces: split after it."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); session is field 6, starttime field 22.
    return _Stat(state=fields[0], session=int(fields[3]), start_ticks=int(fields[19]))


def session_processes(session_id: int) -> set[Process]:
    """The live processes of session ``session_id`` (its leader included while alive)."""
    found = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat.session == session_id and stat.state != "Z":
            found.add(Process(int(entry.name), stat.start_ticks))
    return found


def wait_until_gone(processes: Iterable[Process], timeout_s: float) -> set[Process]:
    """Wait up to ``timeout_s`` for ``processes`` to exit; those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = {process for process in processes if process.is_alive()}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {process for process in alive if process.is_alive()}
    return alive


def kill(processes: Iterable[Process]) -> None:
    """SIGKILL each of ``processes`` that is still the process it names. A
    pidfd pins the process before its start time is checked, so the signal
    cannot reach a newcomer that took the pid in between."""
    for process in processes:
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            continue
        try:
            if process.is_alive():
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited after the check
        finally:
            os.close(pidfd)
