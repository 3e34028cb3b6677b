"""Benchmark loaders: a data file (or the hub) becomes a list of `Item(id, prompt, extra)`.

Knows: the three benchmarks' published file formats and which field is the prompt.
- HH: Anthropic HH-RLHF transcripts (`transcript` in red-team-attempts, `chosen`/`rejected` in
  the other hh-rlhf files), `.jsonl`, `.jsonl.gz` or a JSON list; the prompt is the first human
  turn (the text between the first "Human:" and the first "Assistant:", double newlines made
  single, as the official run does).
- adv: a JSON list (or `.jsonl`) of `{"goal", "controls"}`, prompt = goal + " " + controls (the
  official format), or AdvBench's `harmful_behaviors.csv` (`goal`, no suffix).
- truth: TruthfulQA's CSV (either release; the UTF-8 BOM is ignored) or records with the hub's
  field names; `best_answer`, `source`, `correct_answers`, `incorrect_answers` go into `extra`.

Ids are positions after the optional shuffle (`run.shuffle_seed`; the official runs used 42 with
the hub's `Dataset.shuffle`, i.e. numpy's `default_rng(seed).permutation`, reproduced here), so
they are stable across runs and independent of how the prompts are later sharded.
Does not know: prompt formats, models or outputs. A malformed file raises one `DataError`
naming the file, the line (or list item) and the field.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from rain.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataError(ValueError):
    """A data file that cannot be read as the benchmark's format; the message names file, line and field."""


@dataclass(frozen=True)
class Item:
    """One benchmark prompt."""

    id: int
    """Position after the shuffle: stable, and the per-prompt seed offset."""
    prompt: str
    """The bare question (no few-shot prefix, no turn markers)."""
    extra: dict = field(default_factory=dict)
    """Benchmark fields copied into the output record (truth: best_answer, source, ...)."""


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from (for error messages)."""

    data: dict
    where: str
    """'file, line N' or 'hub dataset NAME, row N'."""


# ----------------------------------------------------------------------------- reading files

def resolve_data_path(data: str) -> Path:
    """A data path as given, relative to the working directory, or else relative to the project root."""
    path = Path(data).expanduser()
    if path.is_absolute() or path.exists() or not (PROJECT_ROOT / path).exists():
        return path
    return PROJECT_ROOT / path


def _text(path: Path) -> str:
    """The file's text; .gz files are decompressed; a UTF-8 BOM is dropped."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None


def _json_rows(path: Path, text: str) -> Iterator[Row]:
    """Rows of a JSON list (where = list item) or of JSON lines (where = line number)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}: not valid JSON: {err.msg}") from None
        for index, obj in enumerate(data):
            yield _object_row(obj, f"{path}, item {index}")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON: {err.msg}") from None
        yield _object_row(obj, f"{path}, line {number}")


def _object_row(obj, where: str) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return Row(obj, where)


def _csv_rows(path: Path, text: str) -> Iterator[Row]:
    """Rows of a CSV file with a header line; where = the row's first physical line."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    start = 2
    for row in reader:
        if None in row:
            raise DataError(f"{path}, line {start}: more values than the {len(reader.fieldnames)} columns "
                            f"{reader.fieldnames}")
        yield Row({key: value for key, value in row.items()}, f"{path}, line {start}")
        start = reader.line_num + 1


def read_rows(path: Path) -> list[Row]:
    """All records of a .csv, .json, .jsonl or .jsonl.gz file."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    text = _text(path)
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return list(_csv_rows(path, text))
    return list(_json_rows(path, text))


def _hub_rows(benchmark: str) -> list[Row]:
    """The benchmark's hub dataset, as the official runs load it (needs network and `datasets`)."""
    if benchmark == "adv":
        raise DataError("run.data must be set for adv: a JSON list of {goal, controls} from an attack "
                        "(official format) or AdvBench's harmful_behaviors.csv")
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"run.data is not set, so {benchmark} would load from the hub, but the 'datasets' package "
                        "is not installed: pass --data FILE or install the hub extra (pip install 'rain[hub]')")
    import datasets

    if benchmark == "HH":
        name, rows = "Anthropic/hh-rlhf", datasets.load_dataset("Anthropic/hh-rlhf", data_dir="red-team-attempts",
                                                                split="train")
    else:
        name, rows = "truthfulqa/truthful_qa", datasets.load_dataset("truthfulqa/truthful_qa", "generation",
                                                                     split="validation")
    return [Row(dict(row), f"hub dataset {name}, row {index}") for index, row in enumerate(rows)]


# ----------------------------------------------------------------------------- one row -> prompt

def _field(row: Row, names: tuple[str, ...]) -> str:
    """The first of `names` present in the row, as a non-empty string."""
    for name in names:
        if name in row.data:
            value = row.data[name]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{row.where}: field {name!r} must be a non-empty string, got {value!r}")
            return value
    present = ", ".join(map(repr, row.data)) or "none"
    raise DataError(f"{row.where}: missing field {' or '.join(map(repr, names))} (fields present: {present})")


def first_human_turn(transcript: str) -> Optional[str]:
    """The text of the first human turn of an HH transcript, or None if it has no Human/Assistant turn."""
    text = transcript.replace("\n\n", "\n")
    human = text.find("Human:")
    assistant = text.find("Assistant:", human + 1)
    if human < 0 or assistant < 0:
        return None
    return text[human + len("Human:"):assistant].strip()


HH_FIELDS = ("transcript", "chosen", "rejected")
"""Transcript fields of hh-rlhf files, in order of preference (red-team-attempts has `transcript`)."""


def hh_item(row: Row) -> tuple[str, dict]:
    name = next((n for n in HH_FIELDS if n in row.data), None)
    question = first_human_turn(_field(row, (name,) if name else HH_FIELDS))
    if not question:
        raise DataError(f"{row.where}: field {name!r} has no 'Human: ... Assistant:' turn")
    return question, {}


def adv_item(row: Row) -> tuple[str, dict]:
    goal = _field(row, ("goal",))
    extra = {"goal": goal}
    if "controls" in row.data:
        extra["controls"] = _field(row, ("controls",))
    if isinstance(row.data.get("target"), str):
        extra["target"] = row.data["target"]
    prompt = goal + " " + extra["controls"] if "controls" in extra else goal
    return prompt, extra


def _answers(value, where: str, name: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    raise DataError(f"{where}: field {name!r} must be a list or a '; '-separated string, got {value!r}")


def truth_item(row: Row) -> tuple[str, dict]:
    question = _field(row, ("Question", "question"))
    extra = {"best_answer": _field(row, ("Best Answer", "best_answer")),
             "source": row.data.get("Source", row.data.get("source", ""))}
    if extra["source"] is None or not isinstance(extra["source"], str):
        raise DataError(f"{row.where}: field 'source' must be a string, got {extra['source']!r}")
    for csv_name, hub_name in (("Correct Answers", "correct_answers"), ("Incorrect Answers", "incorrect_answers")):
        name = csv_name if csv_name in row.data else hub_name
        if name in row.data:
            extra[hub_name] = _answers(row.data[name], row.where, name)
    return question, extra


def length_filter_text(benchmark: str, prompt: str) -> str:
    """The text whose tokens (with the tokenizer's BOS) the official length filter counts: for HH the first
    turn as it stands in the transcript, '\\nHuman: q\\nAssistant:' (double newlines made single, no few-shot
    prefix); for adv (goal + suffix) and truth (the question) the bare prompt."""
    if benchmark == "HH":
        return f"\nHuman: {prompt}\nAssistant:"
    return prompt


PARSERS: dict[str, Callable[[Row], tuple[str, dict]]] = {"HH": hh_item, "adv": adv_item, "truth": truth_item}


# ----------------------------------------------------------------------------- dataset -> items

def shuffled_order(count: int, seed: Optional[int]) -> list[int]:
    """Row indices in run order: numpy default_rng(seed).permutation (what `Dataset.shuffle(seed)` does)."""
    if seed is None:
        return list(range(count))
    return [int(i) for i in np.random.default_rng(seed).permutation(count)]


def load_dataset_items(run: RunConfig) -> list[Item]:
    """Every prompt of the run's dataset, shuffled, with ids 0..n-1 (no start/end/limit selection)."""
    source = str(resolve_data_path(run.data)) if run.data else f"the {run.benchmark} hub dataset"
    rows = read_rows(resolve_data_path(run.data)) if run.data else _hub_rows(run.benchmark)
    if not rows:
        raise DataError(f"{source}: the dataset is empty (no records)")
    parse = PARSERS[run.benchmark]
    parsed = [parse(row) for row in rows]
    order = shuffled_order(len(parsed), run.shuffle_seed)
    return [Item(id=position, prompt=parsed[index][0], extra=parsed[index][1]) for position, index in enumerate(order)]


def select(items: list[Item], run: RunConfig) -> list[Item]:
    """Items with start <= id < end, at most `limit` of them."""
    end = len(items) if run.end is None else min(run.end, len(items))
    chosen = items[run.start:end]
    return chosen if run.limit is None else chosen[:run.limit]


def load_items(run: RunConfig) -> list[Item]:
    """The run's prompts: loaded, shuffled, selected by start/end/limit; an empty selection is an error."""
    items = load_dataset_items(run)
    chosen = select(items, run)
    if not chosen:
        raise DataError(f"no prompts selected: run.start={run.start}, run.end={run.end}, run.limit={run.limit} "
                        f"with {len(items)} prompts in {run.data or 'the hub dataset'}")
    return chosen
