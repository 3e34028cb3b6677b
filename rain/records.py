"""Output records: the per-prompt schema, append-only shard files, resume and the deterministic merge.

Knows: file layout of a run under ``<outdir>``:
  ``<name>.json``            the merged JSON list, one record per prompt, ordered by id
  ``<name>.meta.json``       the run header: benchmark, model, resolved config, versions, hardware
  ``<name>.parts/``          ``shard-R-of-W.jsonl`` (one JSON object per finished prompt, appended and
                             flushed at once) and ``shard-R-of-W.log`` (the worker's output)
  ``<name>.lock``            the run lock (rain/runlock.py)
A record carries the official fields (``question`` = full model prompt, ``raina``, ``pa``; truth
adds ``best_answer``, ``source``) plus ``id``, ``prompt``, ``seed``, ``stats``, ``status`` (ok,
skipped with a ``reason``, or error with a ``reason``) and ``key``, the fingerprint of the prompt's
content. Resume reads every shard of the run, whatever the number of workers that wrote it: a
prompt is finished once a complete line holds a record with its id AND its key (a record of other
text at that id, left by a changed data file, never counts); a broken last line (a crash
mid-write) is ignored with a warning and that prompt is redone. Error records count as finished
unless ``run.retry_errors`` asks for another try; the merge prefers an ok or skipped record to an
error one. The header holds the fingerprint of the whole prompt list, so a changed data file is
caught before any work. Does not know: models, search, sharding.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional

from rain.config import RainConfig
from rain.fileio import OutputError, atomic_write_text, describe
from rain.tasks import Item, Selection

# Fields that may change between runs sharing one output name (selection, location, batching, retries: not answers).
_SELECTION_FIELDS = ("start", "end", "limit", "outdir", "name", "batch_size", "retry_errors")
STATUS_RANK = {"ok": 0, "skipped": 0, "error": 1}
"""Which record the merge keeps when a prompt has several: the lowest rank, then the first written."""


# ----------------------------------------------------------------------------- schema

def _answer(result) -> tuple[Optional[str], Optional[dict]]:
    if result is None:
        return None, None
    return result.text, result.stats.to_dict()


def ok_record(item: Item, *, question: str, seed: int, rain=None, vanilla=None) -> dict:
    """A finished prompt. `rain` / `vanilla` are GenerationResults (or None when that mode did not run)."""
    raina, rain_stats = _answer(rain)
    pa, vanilla_stats = _answer(vanilla)
    return {"id": item.id, "question": question, "prompt": item.prompt, "raina": raina, "pa": pa, "seed": seed,
            "stats": {"rain": rain_stats, "vanilla": vanilla_stats}, "status": "ok", **item.extra, "key": item.key}


def skipped_record(item: Item, *, question: str, seed: int, reason: str) -> dict:
    """A prompt that was not answered (e.g. too long), with the reason."""
    return {"id": item.id, "question": question, "prompt": item.prompt, "raina": None, "pa": None, "seed": seed,
            "stats": {"rain": None, "vanilla": None}, "status": "skipped", "reason": reason, **item.extra,
            "key": item.key}


def error_record(item: Item, *, seed: int, error: BaseException) -> dict:
    """A prompt whose answer failed (tokenizer error, out of memory, NaN probabilities ...), with the reason.
    It counts as finished: a rerun tries it again only with run.retry_errors (--retry-errors)."""
    return {"id": item.id, "question": None, "prompt": item.prompt, "raina": None, "pa": None, "seed": seed,
            "stats": {"rain": None, "vanilla": None}, "status": "error", "reason": error_reason(error),
            **item.extra, "key": item.key}


def error_reason(error: BaseException, limit: int = 300) -> str:
    """'ExceptionType: first line of its message', cut to `limit` characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def matches(record: dict, item: Item) -> bool:
    """Whether `record` answers `item`: same id and same content (records older than content keys: same prompt)."""
    if record.get("id") != item.id:
        return False
    if "key" in record:
        return record["key"] == item.key
    return record.get("prompt") == item.prompt


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class RunPaths:
    """Where one named run's files live."""

    outdir: Path
    name: str

    @property
    def merged(self) -> Path:
        return self.outdir / f"{self.name}.json"

    @property
    def meta(self) -> Path:
        return self.outdir / f"{self.name}.meta.json"

    @property
    def parts(self) -> Path:
        return self.outdir / f"{self.name}.parts"

    def shard(self, *, rank: int, world: int) -> Path:
        return self.parts / f"shard-{rank:03d}-of-{world:03d}.jsonl"

    @property
    def lock(self) -> Path:
        return self.outdir / f"{self.name}.lock"

    def log(self, *, rank: int, world: int) -> Path:
        return self.parts / f"shard-{rank:03d}-of-{world:03d}.log"

    def shard_files(self) -> list[Path]:
        return sorted(self.parts.glob("shard-*.jsonl")) if self.parts.is_dir() else []


def run_name(cfg) -> str:
    """run.name, or '<benchmark>-<model>-<mode>' with the model's last path part."""
    if cfg.run.name:
        return cfg.run.name
    model = Path(cfg.model.name.rstrip("/")).name.removesuffix(".gguf")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return f"{cfg.run.benchmark}-{safe}-{cfg.run.mode}"


# ----------------------------------------------------------------------------- shard files

def _complete_lines(path: Path) -> tuple[list[dict], int]:
    """Parsed finished lines and the byte length they span.

    A line is finished when it ends with a newline and parses. The last line may be broken (a crash
    mid-write): it is left out with a warning. A broken line before the last is an error.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last element is what follows the final newline ('' if none)
    records, offset = [], 0
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip())
        finished = number < len(lines)
        if line.strip():
            record = _parse_line(line) if finished else None
            if record is None:
                if not is_last and finished:
                    raise ValueError(f"{path}, line {number}: not a JSON record with an integer 'id'; the shard "
                                     "file is damaged before its last line: delete that line (the prompt is answered "
                                     "again) and rerun")
                warnings.warn(f"{path}, line {number}: broken last line (a crash mid-write?) ignored; that "
                              "prompt will be redone", stacklevel=3)
                break
            records.append(record)
        offset += len(line) + (1 if finished else 0)
    return records, offset


def _parse_line(line: bytes) -> Optional[dict]:
    """The record on a line, or None if the line is not a JSON object with an integer id."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), int):
        return None
    return record


def read_shard(path: Path) -> list[dict]:
    """The finished records of one shard file (a broken last line is ignored with a warning)."""
    return _complete_lines(path)[0]


def repair_shard(path: Path) -> None:
    """Cut a broken last line off a shard file so that appending continues on a clean line."""
    if not path.exists():
        return
    _, good_end = _complete_lines(path)
    if good_end < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good_end)


def done_ids(paths: RunPaths, items: Optional[list[Item]] = None, *, retry_errors: bool = False) -> set[int]:
    """Ids of the prompts finished in any shard of the run. With `items`, only records matching their item's
    content count; with `retry_errors`, error records do not count."""
    by_id = None if items is None else {item.id: item for item in items}
    done = set()
    for path in paths.shard_files():
        for record in read_shard(path):
            if retry_errors and record.get("status") == "error":
                continue
            if by_id is None or (record["id"] in by_id and matches(record, by_id[record["id"]])):
                done.add(record["id"])
    return done


class ShardWriter:
    """Appends one record per line to a shard file, flushed and synced before `append` returns."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_shard(path)
        self.path = path
        self._handle = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as err:  # a full disk: a torn last line, if any, is cut when the run resumes
            raise OutputError(f"cannot append a record to {self.path}: {describe(err)}; free space and rerun the "
                              "same command (finished records are kept)") from None

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError:
            pass  # the error was reported by append

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- merge and header

def collect(paths: RunPaths, *, ids: Optional[list[int]] = None, items: Optional[list[Item]] = None) -> list[dict]:
    """One finished record per prompt, ordered by id: an ok or skipped record before an error one, then the first
    written. Restricted to `ids`, or to `items` (then a record must also match its item's content)."""
    by_item = None if items is None else {item.id: item for item in items}
    wanted = None if ids is None else set(ids)
    by_id: dict[int, dict] = {}
    for path in paths.shard_files():
        for record in read_shard(path):
            i = record["id"]
            if wanted is not None and i not in wanted:
                continue
            if by_item is not None and (i not in by_item or not matches(record, by_item[i])):
                continue
            if i not in by_id or _rank(record) < _rank(by_id[i]):
                by_id[i] = record
    return [by_id[i] for i in sorted(by_id)]


def _rank(record: dict) -> int:
    return STATUS_RANK.get(record.get("status", "ok"), 0)


def _write_json(path: Path, data, **kwargs) -> None:
    """Write JSON atomically (fileio.atomic_write_text: its errors and its default advice unless given)."""
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n", **kwargs)


def merge(paths: RunPaths, *, ids: Optional[list[int]] = None, items: Optional[list[Item]] = None,
          records: Optional[list[dict]] = None) -> Path:
    """Write ``<name>.json``: the finished records (of `ids` or `items`, if given; or `records`, already
    collected) as a JSON list ordered by id."""
    _write_json(paths.merged, collect(paths, ids=ids, items=items) if records is None else records,
                what_to_do="free disk space, then merge again with --merge-only (the finished records are safe "
                           f"in {paths.parts})")
    return paths.merged


def versions() -> dict:
    """Versions of python and of the packages that decide the answers."""
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "rain"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = getattr(sys.modules.get(package), "__version__", "not installed")
    return found


def comparable(config: dict, *, content_checked: bool = False) -> dict:
    """The part of a resolved config that must agree for two runs to share output files (with
    `content_checked`, the data path may change too: the prompts' fingerprint is compared instead)."""
    free = _SELECTION_FIELDS + (("data",) if content_checked else ())
    run = {k: v for k, v in config["run"].items() if k not in free}
    return json.loads(json.dumps({**config, "run": run}))


def write_or_check_meta(paths: RunPaths, cfg, *, hardware: dict, selection: Optional[Selection] = None) -> Optional[str]:
    """Write the run header if it is new; if it exists, refuse to mix outputs of another config or of other
    prompts. A header whose run never wrote a record (a failed first launch) is replaced. Returns a note for
    the user, or None."""
    config = json.loads(json.dumps(cfg.to_dict()))
    prompts = None if selection is None else {"source": selection.source, "count": len(selection.dataset),
                                              "fingerprint": selection.fingerprint}
    meta = {"benchmark": cfg.run.benchmark, "model": cfg.model.name, "name": paths.name, "config": config,
            "prompts": prompts, "versions": versions(), "hardware": hardware,
            "created": datetime.now(timezone.utc).isoformat()}
    if not paths.meta.exists():
        paths.outdir.mkdir(parents=True, exist_ok=True)
        _write_json(paths.meta, meta)
        return None
    old = _read_meta(paths.meta)
    def started() -> bool:  # read only when it decides something
        return any(read_shard(path) for path in paths.shard_files())

    content_checked = bool(old.get("prompts")) and prompts is not None
    old_config = old.get("config", {})
    differ = (_differences(comparable(old_config, content_checked=content_checked),
                           comparable(config, content_checked=content_checked))
              if isinstance(old_config, dict) and isinstance(old_config.get("run"), dict) else ["config"])
    if differ and not started():
        _write_json(paths.meta, meta)
        return f"replaced the header of {paths.name}, whose first launch wrote no record ({', '.join(differ)})"
    if differ:
        raise ValueError(f"{paths.meta}: these outputs were made with a different config ({', '.join(differ)}); "
                         "resume with the same config, or pass --name / --outdir for a new run")
    if not content_checked or old["prompts"].get("fingerprint") == prompts["fingerprint"]:
        return None
    if not started():
        _write_json(paths.meta, meta)
        return None
    stale = _stale_ids(paths, selection)
    was = f"{old['prompts'].get('count')} prompts (from {old['prompts'].get('source')})"
    now = f"{prompts['count']} (from {prompts['source']})"
    if stale:
        raise ValueError(f"{paths.meta}: the prompts changed since this run started: it had {was}, now {now}, and "
                         f"{len(stale)} finished records belong to prompts that are now different or gone (ids "
                         f"{_first(stale)}); restore the data file as it was, or start a new run with --name NEW or "
                         "--outdir DIR")
    _write_json(paths.meta, {**old, "prompts": prompts,
                             "prompts_before": old.get("prompts_before", []) + [old["prompts"]]})
    return (f"the prompts changed since this run started ({was}, now {now}), but every finished record still "
            "matches its prompt: only the prompts not yet answered will be")


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: the run header is unreadable ({' '.join(str(err).split())[:120]}); restore it, "
                         "or start a new run with --name NEW or --outdir DIR") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the run header is not a JSON object; restore it, or start a new run with "
                         "--name NEW or --outdir DIR")
    return meta


def _stale_ids(paths: RunPaths, selection: Selection) -> list[int]:
    """Ids of finished records whose prompt is no longer the dataset's prompt at that id."""
    by_id = {item.id: item for item in selection.dataset}
    return sorted({record["id"] for path in paths.shard_files() for record in read_shard(path)
                   if record["id"] not in by_id or not matches(record, by_id[record["id"]])})


def _first(ids: list[int], count: int = 5) -> str:
    return ", ".join(map(str, ids[:count])) + (", ..." if len(ids) > count else "")


def _differences(old: dict, new: dict) -> list[str]:
    """'section.key: old -> new' for each field that differs. A field the old header lacks (added to the config
    since that run began) compares as its default, which keeps the behaviour from before the field existed."""
    defaults = json.loads(json.dumps(RainConfig().to_dict()))

    def was(section, key):
        values = old.get(section)
        if not isinstance(values, dict):
            return None
        return values[key] if key in values else defaults.get(section, {}).get(key)

    return [f"{section}.{key}: {was(section, key)!r} -> {value!r}"
            for section, values in new.items() for key, value in values.items() if was(section, key) != value]
