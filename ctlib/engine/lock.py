"""One process trains a run at a time: a lock file in the run folder while it trains.

The lock (``<run_dir>/lock``) is created atomically (``O_CREAT | O_EXCL``) and holds, as JSON, the host, the
PID, the start time and a token. A lock whose process is gone (same host, PID not alive, or alive but
started after the lock: a reused PID) is stale: it is taken over with a warning. A lock held by a live
process, or by one on another host (which cannot be checked), is waited for up to ``timeout`` seconds,
then ``RunLockedError`` says who holds it and what to do.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
import warnings
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_NAME = "lock"
POLL_S = 0.25
UNREADABLE_GRACE_S = 5.0   # a lock another process is writing right now reads as empty for a moment


class RunLockedError(RuntimeError):
    """Another process holds the run's lock."""


def _proc_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a reused PID from the lock's process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool | None:
    """True/False when it can be told (POSIX), None when not."""
    if os.name != "posix":
        return None               # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True               # alive, another user's
    except OSError:
        return None
    try:                          # a zombie (exited, not yet reaped) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _describe(holder: dict) -> str:
    return f"process {holder['pid']} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"


@contextlib.contextmanager
def _takeover_guard(folder: Path):
    """Serialise stale-lock take-overs between processes of this host (flock on the run folder), so two
    of them cannot both remove a stale lock and one remove the other's fresh one."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)              # releases the flock


class RunLock:
    """``with RunLock(run_dir, timeout):`` holds the run's lock; released on leaving, error or not."""

    def __init__(self, folder, timeout: float = 0.0, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.timeout = float(timeout)
        self.what = what
        self.token: str | None = None
        self.created_folder = False

    def _try_create(self) -> bool:
        host = socket.gethostname()
        holder = {"host": host, "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "pid_start": _proc_start(os.getpid()), "token": uuid.uuid4().hex}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(holder))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        self.token = holder["token"]
        return True

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        alive = _alive(holder["pid"])
        if alive is False:
            return True
        started = holder.get("pid_start")
        return bool(alive and started is not None and _proc_start(holder["pid"]) not in (None, started))

    def _take_over(self, holder: dict) -> bool:
        """Remove the stale lock ``holder`` if it is still the one there; True when removed."""
        with _takeover_guard(self.folder):
            try:
                if _read(self.path) != holder:
                    return False
                self.path.unlink()
            except FileNotFoundError:
                return False
        warnings.warn(f"taking over the stale lock {self.path} of {_describe(holder)}: that process is no longer "
                      f"running (it was killed or crashed); the {self.what} resumes from its last checkpoint",
                      stacklevel=4)
        return True

    def acquire(self) -> None:
        self.created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        unreadable_since = None
        waiting = False
        while True:
            if self._try_create():
                return
            try:
                holder = _read(self.path)
            except FileNotFoundError:
                continue                                    # released meanwhile: try again at once
            if holder is None:                              # being written, or damaged
                unreadable_since = unreadable_since or time.monotonic()
            else:
                unreadable_since = None
                if self._stale(holder) and self._take_over(holder):
                    continue
            left = deadline - time.monotonic()
            if left <= 0 and (holder is not None or time.monotonic() - unreadable_since > UNREADABLE_GRACE_S):
                raise RunLockedError(self._locked_message(holder))
            if not waiting:
                log.info("%s is locked by %s; waiting up to %g s", self.folder,
                         _describe(holder) if holder else "another process", self.timeout)
                waiting = True
            time.sleep(min(POLL_S, max(left, 0.05)))

    def _locked_message(self, holder: dict | None) -> str:
        waited = f" (waited {self.timeout:g} s)" if self.timeout > 0 else ""
        if holder is None:
            return (f"the {self.what} in {self.folder} is locked{waited}, but its lock file {self.path} cannot be "
                    f"read (damaged). If no process is training this {self.what}, delete {self.path} and try again.")
        return (f"the {self.what} in {self.folder} is being trained by {_describe(holder)}{waited}: its lock file is "
                f"{self.path}. Wait for that process to finish (fit then returns the finished record), or pass "
                f"lock_timeout=<seconds> to wait for it. If that process is gone (e.g. its machine crashed or "
                f"was shut down), delete {self.path} and try again.")

    def release(self) -> None:
        if self.token is None:
            return
        try:
            holder = _read(self.path)
            if holder is not None and holder.get("token") == self.token:
                self.path.unlink()
            else:
                log.warning("lock %s is no longer this process's: left in place", self.path)
        except FileNotFoundError:
            log.warning("lock %s was removed while this process held it", self.path)
        finally:
            self.token = None
        if self.created_folder:       # nothing was written (e.g. the data failed to load): leave no empty folder
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
