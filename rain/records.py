"""Output records: the per-prompt schema, append-only shard files, resume and the deterministic merge.

Knows: file layout of a run under ``<outdir>``:
  ``<name>.json``            the merged JSON list, one record per prompt, ordered by id
  ``<name>.meta.json``       the run header: benchmark, model, resolved config, versions, hardware
  ``<name>.parts/``          ``shard-R-of-W.jsonl`` (one JSON object per finished prompt, appended and
                             flushed at once) and ``shard-R-of-W.log`` (the worker's output)
A record carries the official fields (``question`` = full model prompt, ``raina``, ``pa``; truth
adds ``best_answer``, ``source``) plus ``id``, ``prompt``, ``seed``, ``stats``, ``status``.
Resume reads every shard of the run, whatever the number of workers that wrote it: a record is
finished once its line is complete; a broken last line (a crash mid-write) is ignored with a
warning and that prompt is redone. Does not know: models, search, sharding.
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

from rain.tasks import Item

# Fields that may change between runs sharing one output name (selection, location, batching: not answers).
_SELECTION_FIELDS = ("start", "end", "limit", "outdir", "name", "batch_size")


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
            "stats": {"rain": rain_stats, "vanilla": vanilla_stats}, "status": "ok", **item.extra}


def skipped_record(item: Item, *, question: str, seed: int, reason: str) -> dict:
    """A prompt that was not answered (e.g. too long), with the reason."""
    return {"id": item.id, "question": question, "prompt": item.prompt, "raina": None, "pa": None, "seed": seed,
            "stats": {"rain": None, "vanilla": None}, "status": "skipped", "reason": reason, **item.extra}


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
                                     "file is damaged before its last line")
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


def done_ids(paths: RunPaths) -> set[int]:
    """Ids of every prompt finished in any shard of the run."""
    return {record["id"] for path in paths.shard_files() for record in read_shard(path)}


class ShardWriter:
    """Appends one record per line to a shard file, flushed and synced before `append` returns."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_shard(path)
        self.path = path
        self._handle = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- merge and header

def collect(paths: RunPaths, *, ids: Optional[list[int]] = None) -> list[dict]:
    """Finished records ordered by id (first occurrence wins), restricted to `ids` when given."""
    wanted = None if ids is None else set(ids)
    by_id: dict[int, dict] = {}
    for path in paths.shard_files():
        for record in read_shard(path):
            if (wanted is None or record["id"] in wanted) and record["id"] not in by_id:
                by_id[record["id"]] = record
    return [by_id[i] for i in sorted(by_id)]


def _write_json(path: Path, data) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def merge(paths: RunPaths, *, ids: Optional[list[int]] = None) -> Path:
    """Write ``<name>.json``: the finished records (of `ids`, if given) as a JSON list ordered by id."""
    _write_json(paths.merged, collect(paths, ids=ids))
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


def comparable(config: dict) -> dict:
    """The part of a resolved config that must agree for two runs to share output files."""
    run = {k: v for k, v in config["run"].items() if k not in _SELECTION_FIELDS}
    return json.loads(json.dumps({**config, "run": run}))


def write_or_check_meta(paths: RunPaths, cfg, *, hardware: dict) -> None:
    """Write the run header if it is new; if it exists, refuse to mix outputs of a different config."""
    config = json.loads(json.dumps(cfg.to_dict()))
    if paths.meta.exists():
        old = json.loads(paths.meta.read_text(encoding="utf-8")).get("config", {})
        differ = _differences(comparable(old), comparable(config)) if "run" in old else ["config"]
        if differ:
            raise ValueError(f"{paths.meta}: these outputs were made with a different config ({', '.join(differ)}); "
                             "resume with the same config, or pass --name / --outdir for a new run")
        return
    paths.outdir.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": cfg.run.benchmark, "model": cfg.model.name, "name": paths.name, "config": config,
            "versions": versions(), "hardware": hardware, "created": datetime.now(timezone.utc).isoformat()}
    _write_json(paths.meta, meta)


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
            for section, values in new.items() for key, value in values.items()
            if old.get(section, {}).get(key) != value]
