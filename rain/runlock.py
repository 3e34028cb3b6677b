"""One launcher per run, and workers that do not outlive their launcher.

Knows: the run lock, an OS advisory lock (``flock``) on ``<outdir>/<name>.lock``. The kernel
releases it when the last process holding it dies, however it dies (SIGKILL included), so a
killed launcher never keeps it; no stale-lock clean-up is needed or done. The launcher holds it
exclusively and hands the open file to its workers, so the lock is free only once the launcher
AND its workers are gone (a rerun can never race the workers of a killed launcher). A worker
run on its own (torchrun, ``python -m rain.worker``) holds it shared: several ranks together,
never beside a launcher. The file holds the holder's pid, for the message.

Also: `stop_with_parent`, which makes a worker end when its launcher dies (Linux: the kernel
sends SIGTERM through prctl(PR_SET_PDEATHSIG); elsewhere a thread watches the parent pid).
Does not know what the run computes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from rain.fileio import OutputError, describe

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against a second launcher there
    fcntl = None

PR_SET_PDEATHSIG = 1
WAIT_FOR_DYING_HOLDER_S = 15.0
"""How long to wait for the lock when its holder is a launcher that has died (its workers are stopping)."""


class RunBusy(ValueError):
    """Another launcher (or worker) holds the run's lock; the message names its pid and what to do."""


class RunLock:
    """The lock of one run; use as a context manager. `shared=True` for workers started without a launcher."""

    def __init__(self, path: Path, *, shared: bool = False, wait_s: float = WAIT_FOR_DYING_HOLDER_S):
        self.path = Path(path)
        self.shared = shared
        self.wait_s = wait_s
        self.handle = None

    def fileno(self) -> int:
        """The locked file's descriptor (pass it to the workers so they hold the lock too)."""
        return self.handle.fileno()

    def acquire(self) -> "RunLock":
        try:
            self.handle = open(self.path, "a+", encoding="utf-8")
        except OSError as err:
            raise OutputError(f"cannot create the run lock {self.path}: {describe(err)}") from None
        if fcntl is None:
            return self
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + self.wait_s
        while not self._try(mode):
            holder = self._holder()
            if holder is not None and _alive(holder) or time.monotonic() > deadline:
                self.handle.close()
                self.handle = None
                raise RunBusy(self._busy_message(holder))
            time.sleep(0.2)  # the holder died; its workers are still stopping
        if not self.shared:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.write(f"{os.getpid()}\n")
            self.handle.flush()
        return self

    def _try(self, mode: int) -> bool:
        try:
            fcntl.flock(self.handle.fileno(), mode)
            return True
        except BlockingIOError:
            return False

    def _holder(self) -> Optional[int]:
        self.handle.seek(0)
        text = self.handle.read().strip()
        return int(text) if text.isdigit() else None

    def _busy_message(self, holder: Optional[int]) -> str:
        run = f"run {self.path.with_suffix('')}"
        if holder is not None and _alive(holder):
            who, stop = f"another launcher (pid {holder})", f" (kill {holder})"
        elif holder is not None:
            who, stop = f"the workers of launcher {holder}, which has died,", ""
        else:
            who, stop = "another process (workers started with torchrun or python -m rain.worker?)", ""
        return (f"{who} is running {run}: wait for it to finish or stop it{stop}, or start another run with "
                "--name NAME or --outdir DIR")

    def release(self) -> None:
        if self.handle is not None:
            if not self.shared and fcntl is not None:
                try:  # still holding the lock: clear the pid so that no one reads a stale one
                    self.handle.seek(0)
                    self.handle.truncate()
                    self.handle.flush()
                except OSError:
                    pass
            self.handle.close()  # closing the last descriptor releases the lock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_with_parent(parent_pid: int, *, poll_s: float = 1.0) -> None:
    """End this process (SIGTERM) when `parent_pid` is no longer its parent, i.e. the parent died."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rain-parent-watchdog", daemon=True).start()
