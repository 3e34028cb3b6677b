"""Files that survive faults: atomic writes that leave nothing behind when they fail.

Knows: how to replace a file so that a reader sees the old or the new content, never half of
one (temporary file in the same folder, flush, fsync, rename), and how a failed write (a full
disk, a read-only folder) becomes one `OutputError` line naming the file, with the temporary
file removed. Also: warnings shown as one plain line ("rain: warning: ..."), not Python's
two-line "file:line: UserWarning" form. Does not know what the files hold.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path


class OutputError(ValueError):
    """An output file or folder that cannot be written; the message names it and says what to do."""


def describe(err: OSError) -> str:
    """'No space left on device' rather than '[Errno 28] No space left on device: ...'."""
    return err.strerror or type(err).__name__


def atomic_write_text(path: Path, text: str, *, what_to_do: str = "free disk space or fix the folder's "
                                                                   "permissions, then rerun") -> None:
    """Replace `path` with `text` (UTF-8) atomically; on failure the old file is intact and no temporary
    file is left. Raises OutputError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise OutputError(f"cannot write {path}: {describe(err)}; {what_to_do}") from None


def remove_quietly(path: Path) -> None:
    """Delete a file if it is there; a failure to delete is ignored (used on error paths only)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def check_writable_dir(folder: Path) -> None:
    """Create `folder` if needed and make (then remove) a file in it; OutputError when either fails.

    A real probe rather than os.access, which says yes to root even on a read-only filesystem."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {folder}: {describe(err)}") from None
    probe = folder / f".rain-write-probe.{os.getpid()}"
    try:
        with open(probe, "w", encoding="utf-8"):
            pass
    except OSError as err:
        raise OutputError(f"cannot write to output folder {folder}: {describe(err)}") from None
    finally:
        remove_quietly(probe)


def plain_warnings(prog: str) -> None:
    """Show every warning of this process as one line on stderr: '<prog>: warning: <message>'."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show
