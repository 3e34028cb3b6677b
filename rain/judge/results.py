"""Reading benchmark results files for scoring, and naming the files scoring writes.

Knows: the merged results schema of the launchers (a JSON list of records with `id`,
`question`, `prompt`, `raina`, `pa`, `stats`, `status`; truth adds `best_answer`), the
`<name>.meta.json` beside it, the official RAIN output (a plain list of {question, raina, pa}
whose list index becomes the id), and how to tell the benchmark: meta file, then fields
(`best_answer` means truth), then the user's `--benchmark`. Does not know judges.

Every way a file can be unusable is a `JudgeError` whose one line says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rain.judge.config import JudgeError

BENCHMARKS = ("HH", "adv", "truth")
ANSWER_KINDS = ("raina", "pa")
"""Answer fields of a record: RAIN's answer and the vanilla answer."""
KIND_LABELS = {"raina": "RAIN", "pa": "vanilla"}


@dataclass(frozen=True)
class Results:
    """A results file ready to score: its records (skipped ones removed) and what it is."""

    path: Path
    benchmark: str
    model: str
    records: tuple[dict, ...]
    """Records with status "ok" (or no status), each with an int "id" and a "prompt"."""
    n_skipped: int
    """Records not answered on purpose (status "skipped", e.g. too long) or because answering failed
    (status "error"); neither is scored."""
    kinds: tuple[str, ...]
    """Answer kinds present in at least one record ("raina", "pa")."""
    n_errors: int = 0
    """Of n_skipped, the records whose answering failed (status "error")."""


def meta_path(results_path: Path) -> Path:
    return results_path.with_name(_stem(results_path) + ".meta.json")


def scored_path(results_path: Path) -> Path:
    return results_path.with_name(_stem(results_path) + ".scored.json")


def summary_path(results_path: Path) -> Path:
    return results_path.with_name(_stem(results_path) + ".summary.json")


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".json")] if name.endswith(".json") else path.stem


def load_results(path: Path, *, benchmark: str | None = None) -> Results:
    """Read and check a results file; `benchmark` is the user's --benchmark (None = detect)."""
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise JudgeError(f"unknown benchmark {benchmark!r}: use one of {', '.join(BENCHMARKS)}")
    raw = _read_json(path)
    for suffix in (".scored.json", ".summary.json", ".meta.json"):
        if path.name.endswith(suffix):
            raise JudgeError(f"{path} is a {suffix[1:-5]} file written by rain; pass the results file "
                             f"<name>.json it came from")
    if not isinstance(raw, list):
        raise JudgeError(f"{path} is not a results file (expected a JSON list of records, found "
                         f"{type(raw).__name__}); pass the merged <outdir>/<name>.json of a run")
    meta = _read_json(meta_path(path)) if meta_path(path).exists() else {}
    records = [_normalise(record, index=i, path=path) for i, record in enumerate(raw)]
    _check_unique_ids(records, path=path)
    detected = _detect_benchmark(meta=meta, records=records, flag=benchmark, path=path)
    ok = tuple(r for r in records if r.get("status", "ok") not in ("skipped", "error"))
    n_errors = sum(r.get("status") == "error" for r in records)
    kinds = tuple(kind for kind in ANSWER_KINDS if any(r.get(kind) is not None for r in ok))
    if ok and not kinds:
        raise JudgeError(f"{path} has no answers to score: every 'raina' and 'pa' is null")
    return Results(path=path, benchmark=detected, model=str(meta.get("model", "unknown")),
                   records=ok, n_skipped=len(records) - len(ok), kinds=kinds, n_errors=n_errors)


def _check_unique_ids(records: list[dict], *, path: Path) -> None:
    """Each prompt is scored once: a record id seen twice would count that answer twice in every rate."""
    first: dict[int, int] = {}
    for index, record in enumerate(records):
        if record["id"] in first:
            raise JudgeError(f"{path}: records {first[record['id']]} and {index} both have id {record['id']}, so "
                             "that prompt would be counted twice: merge the run again (allocation.py --merge-only) "
                             "or remove the duplicate")
        first[record["id"]] = index


def _read_json(path: Path):
    if not path.exists():
        raise JudgeError(f"{path} does not exist: pass the merged results file of a run, e.g. HH/outputs/<run>.json")
    if path.is_dir():
        raise JudgeError(f"{path} is a folder: pass the merged results file of a run, e.g. {path}/<run>.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JudgeError(f"{path} is not valid JSON (line {err.lineno}): was the run interrupted before "
                         f"its merge? rerun the merge step") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as err:
        raise JudgeError(f"{path} is not a JSON results file ({type(err).__name__}): pass the merged "
                         "<outdir>/<name>.json of a run") from None
    except OSError as err:
        raise JudgeError(f"cannot read {path}: {err.strerror or err}") from None


def _normalise(record, *, index: int, path: Path) -> dict:
    if not isinstance(record, dict):
        raise JudgeError(f"{path} record {index} is a {type(record).__name__}, not an object: "
                         f"expected records with question, raina and pa")
    if "question" not in record and "prompt" not in record:
        raise JudgeError(f"{path} record {index} has no 'question' or 'prompt': not a RAIN results file")
    if "raina" not in record and "pa" not in record:
        raise JudgeError(f"{path} record {index} has neither 'raina' nor 'pa': not a RAIN results file")
    if "scores" in record:
        raise JudgeError(f"{path} is already scored (records carry 'scores'); pass the original results file")
    out = dict(record)
    if not isinstance(record.get("id", index), int) or isinstance(record.get("id", index), bool):
        raise JudgeError(f"{path} record {index} has id {record['id']!r}, not an integer: not a RAIN results file")
    out["id"] = record.get("id", index)
    out["prompt"] = record.get("prompt") or record.get("question") or ""
    for kind in ANSWER_KINDS:
        value = out.get(kind)
        if value is not None and not isinstance(value, str):
            raise JudgeError(f"{path} record {index} field {kind!r} is a {type(value).__name__}, not text")
    return out


def _detect_benchmark(*, meta: dict, records: list[dict], flag: str | None, path: Path) -> str:
    has_best = bool(records) and all("best_answer" in r for r in records)
    from_meta = meta.get("benchmark")
    if from_meta is not None and from_meta not in BENCHMARKS:
        raise JudgeError(f"{meta_path(path)} names benchmark {from_meta!r}; expected one of {', '.join(BENCHMARKS)}")
    found = from_meta or ("truth" if has_best else None)
    if flag is not None and found is not None and flag != found:
        raise JudgeError(f"{path} is a {found} results file but --benchmark {flag} was given: "
                         f"drop --benchmark or pass a {flag} results file")
    benchmark = flag or found
    if benchmark is None:
        raise JudgeError(f"cannot tell the benchmark of {path} (no {meta_path(path).name}): "
                         f"pass --benchmark HH or --benchmark adv")
    if benchmark == "truth" and not has_best:
        raise JudgeError(f"{path} is not a truth results file (records lack 'best_answer'): "
                         f"pass the TruthfulQA run's output or the right --benchmark")
    if benchmark != "truth" and has_best:
        raise JudgeError(f"{path} looks like a truth results file (records have 'best_answer') but is "
                         f"scored as {benchmark}: pass --benchmark truth")
    return benchmark
