"""Append-only JSONL cache of judge verdicts.

Knows: how to key a verdict (hash of judge identity, prompt template id@version, and the judged
texts), how to load a cache file written by an interrupted run (a torn last line is skipped
with a warning), and how to append one entry durably (write, flush, fsync) so a crash loses at
most the verdict in flight. Does not know what a verdict means.

One line per verdict: `{"key": <sha256 hex>, "judge": ..., "template": ..., "verdict": ...,
"unparseable": bool, "raw": <reply text, truncated>}`. When a key appears twice the last entry wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

from rain.judge.config import JudgeError

RAW_KEEP_CHARS = 2000


def verdict_key(*, judge: str, template: str, texts: tuple[str, ...]) -> str:
    """Stable key of one judgement: same judge, template and texts -> same key."""
    blob = json.dumps([judge, template, list(texts)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class VerdictCache:
    """Verdicts by key, backed by a JSONL file (or memory only when `path` is None)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.hits = 0
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            try:
                _drop_torn_tail(path)
                self._entries = load_entries(path)
            except (OSError, UnicodeDecodeError) as err:
                reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
                raise JudgeError(f"cannot read the judge cache {path} ({reason}): pass --cache with another path, "
                                 "or --no-cache") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
            return entry

    def put(self, entry: dict) -> None:
        """Store `entry` (which must carry "key") and append it to the file at once."""
        entry = dict(entry)
        if isinstance(entry.get("raw"), str):
            entry["raw"] = entry["raw"][:RAW_KEEP_CHARS]
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self._entries[entry["key"]] = entry
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as err:
                raise JudgeError(f"cannot write the judge cache {self.path}: {err.strerror or err}; pass --cache "
                                 "PATH in a writable folder with free space (verdicts cached so far are kept)") from None


def load_entries(path: Path) -> dict[str, dict]:
    """Read a cache file; a corrupt last line is skipped with a warning, any other corrupt line is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    entries: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            key = entry["key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                warnings.warn(f"ignoring a corrupt last line in judge cache {path} (interrupted write)")
                continue
            raise ValueError(f"judge cache {path} line {number} is corrupt; delete the file or pass "
                             f"--cache with a new path") from None
        entries[key] = entry
    return entries


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that does not parse (a write torn by a crash) so appends stay readable."""
    data = path.read_bytes()
    body = data.rstrip(b"\n")
    cut = body.rfind(b"\n") + 1
    tail = body[cut:]
    if not tail.strip():
        return
    try:
        json.loads(tail)["key"]
        return
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        pass
    warnings.warn(f"ignoring a corrupt last line in judge cache {path} (interrupted write)")
    with open(path, "rb+") as handle:
        handle.truncate(cut)
