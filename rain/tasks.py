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
import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
import io
import json
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from rain.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataError(ValueError):
    """A data file that cannot be read as the benchmark's format; the message names file, line and field."""


class DataWarning(UserWarning):
    """Legitimate data that changes what a run measures (e.g. adv goals without an attack suffix), with counts."""


@dataclass(frozen=True)
class Item:
    """One benchmark prompt."""

    id: int
    """Position after the shuffle: stable, and the per-prompt seed offset."""
    prompt: str
    """The bare question (no few-shot prefix, no turn markers)."""
    extra: dict = field(default_factory=dict)
    """Benchmark fields copied into the output record (truth: best_answer, source, ...)."""

    @functools.cached_property
    def key(self) -> str:
        """Fingerprint of the prompt's content (prompt and benchmark fields): resume matches records by id AND key."""
        return content_key(self.prompt, self.extra)


def content_key(prompt: str, extra: dict) -> str:
    blob = json.dumps([prompt, extra], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def fingerprint(items: list["Item"]) -> str:
    """Fingerprint of a whole prompt list: the ids in order and each prompt's content key."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.id}:{item.key}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from (for error messages)."""

    data: dict
    where: str
    """'file, line N' or 'hub dataset NAME, row N'."""


# ----------------------------------------------------------------------------- reading files

PACKAGED_DATA = "data"
"""Folder of data files shipped inside the package (the demo prompts), found by file name."""


def resolve_data_path(data: str) -> Path:
    """A data path as given (relative to the working directory), else relative to the project root of a
    checkout, else a file of that name shipped with the package (rain/data/)."""
    path = Path(data).expanduser()
    if path.is_absolute() or path.exists():
        return path
    if (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    packaged = Path(str(importlib.resources.files("rain") / PACKAGED_DATA)) / path.name
    return packaged if packaged.is_file() else path


def _text(path: Path) -> str:
    """The file's text; .gz files are decompressed; a UTF-8 BOM is dropped."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the data file: {err.strerror or err}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise DataError(f"{path}: not a readable gzip file ({reason}): the download may be cut short; "
                            "download it again, or drop the .gz from the name if it is plain text") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None


def _json(text: str):
    """json.loads whose every failure is a JSONDecodeError-like ValueError with a line number."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise json.JSONDecodeError(" ".join(str(err).split())[:120], text, 0) from None


def _json_rows(path: Path, text: str) -> Iterator[Row]:
    """Rows of a JSON list (where = list item) or of JSON lines (where = line number)."""
    if text.lstrip().startswith("["):
        try:
            data = _json(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}: not valid JSON: {err.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        for index, obj in enumerate(data):
            yield _object_row(obj, f"{path}, item {index}")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = _json(line)
        except json.JSONDecodeError as err:
            if number == 1 and line.strip() == "{" and isinstance(_whole_json(text), dict):
                raise DataError(f"{path}: one JSON object; expected a JSON list of records, or one record "
                                "per line (.jsonl)") from None
            raise DataError(f"{path}, line {number}: not valid JSON: {err.msg}") from None
        yield _object_row(obj, f"{path}, line {number}")


def _whole_json(text: str):
    try:
        return _json(text)
    except json.JSONDecodeError:
        return None


def _object_row(obj, where: str) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return Row(obj, where)


def _csv_rows(path: Path, text: str) -> Iterator[Row]:
    """Rows of a CSV file with a header line; where = the row's first physical line."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    start = 2
    try:
        if not reader.fieldnames:
            return
        for row in reader:
            if None in row:
                raise DataError(f"{path}, line {start}: more values than the {len(reader.fieldnames)} columns "
                                f"{reader.fieldnames}")
            yield Row({key: value for key, value in row.items()}, f"{path}, line {start}")
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}, line {start}: not valid CSV: {err}") from None


def read_rows(path: Path) -> list[Row]:
    """All records of a .csv, .json, .jsonl or .jsonl.gz file."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder; run.data must name a data file (.jsonl, .jsonl.gz, .json, .csv)")
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

    name = "Anthropic/hh-rlhf" if benchmark == "HH" else "truthfulqa/truthful_qa"
    try:
        if benchmark == "HH":
            rows = datasets.load_dataset(name, data_dir="red-team-attempts", split="train")
        else:
            rows = datasets.load_dataset(name, "generation", split="validation")
    except Exception as err:  # offline, not cached, a hub outage: the library's errors vary by version
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(f"run.data is not set, so {benchmark} loads the hub dataset {name}, which failed "
                        f"({type(err).__name__}: {reason}): pass --data FILE, or check the network "
                        "(HF_HUB_OFFLINE=1 needs the dataset in the local cache)") from None
    return [Row(dict(row), f"hub dataset {name}, row {index}") for index, row in enumerate(rows)]


# ----------------------------------------------------------------------------- one row -> prompt

def _field(row: Row, names: tuple[str, ...]) -> str:
    """The first of `names` present in the row, as a non-empty string."""
    for name in names:
        if name in row.data:
            value = row.data[name]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{row.where}: field {name!r} must be a non-empty string, got {_shown(value)}")
            return _valid_text(value, row.where, name)
    present = ", ".join(map(repr, row.data)) or "none"
    present = present if len(present) <= 120 else present[:120] + "..."
    raise DataError(f"{row.where}: missing field {' or '.join(map(repr, names))} (fields present: {present})")


def _valid_text(value: str, where: str, name: str) -> str:
    """`value` if it is valid Unicode; a lone surrogate (e.g. a JSON "\\ud83d" escape cut in half) cannot be
    tokenized or written out, so it is a DataError naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{where}: field {name!r} is not valid Unicode text (a lone surrogate "
                        f"{value[err.start]!r} at character {err.start}): fix or remove this row") from None
    return value


def _shown(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
    controls = row.data.get("controls")
    if controls is not None:
        if not isinstance(controls, str):
            raise DataError(f"{row.where}: field 'controls' must be a string (the attack suffix), got "
                            f"{_shown(controls)}")
        extra["controls"] = _valid_text(controls, row.where, "controls")
    if isinstance(row.data.get("target"), str):
        extra["target"] = _valid_text(row.data["target"], row.where, "target")
    prompt = goal + " " + controls if controls else goal
    return prompt, extra


def check_adv_controls(rows: list[Row], source: str) -> None:
    """adv rows without an attack suffix ('controls' absent or null) run as bare goals: a DataError when the file
    mixes them with attacked rows, a DataWarning with the counts when no row has one. "controls": "" marks a
    deliberately bare goal and is counted, not questioned."""
    bare = [row for row in rows if row.data.get("controls") is None]
    if not bare:
        return
    if len(bare) < len(rows):
        raise DataError(f"{bare[0].where}: no 'controls' (attack suffix), while {len(rows) - len(bare)} of the "
                        f"{len(rows)} rows have one ({len(bare)} lack it): give every row its suffix, or "
                        '"controls": "" where a bare goal is meant')
    warnings.warn(f"{source}: none of the {len(rows)} adv rows has 'controls': the goals run without an attack "
                  "suffix (AdvBench's no-attack setting), not as an attack", DataWarning, stacklevel=2)


def _text_list(value, where: str, name: str) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field {name!r} must be a list of strings, got {_shown(value)}")
    return [_valid_text(v, where, name) for v in value]


def _answers(value, where: str, name: str) -> list[str]:
    if isinstance(value, list):
        return _text_list(value, where, name)
    if isinstance(value, str):
        return [part.strip() for part in _valid_text(value, where, name).split(";") if part.strip()]
    raise DataError(f"{where}: field {name!r} must be a list or a '; '-separated string, got {_shown(value)}")


def truth_item(row: Row) -> tuple[str, dict]:
    question = _field(row, ("Question", "question"))
    extra = {"best_answer": _field(row, ("Best Answer", "best_answer")),
             "source": row.data.get("Source", row.data.get("source", ""))}
    if extra["source"] is None or not isinstance(extra["source"], str):
        raise DataError(f"{row.where}: field 'source' must be a string, got {_shown(extra['source'])}")
    _valid_text(extra["source"], row.where, "source")
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
    source = data_source(run)
    rows = read_rows(resolve_data_path(run.data)) if run.data else _hub_rows(run.benchmark)
    if not rows:
        raise DataError(f"{source}: the dataset is empty (no records)")
    parse = PARSERS[run.benchmark]
    parsed = [parse(row) for row in rows]
    if run.benchmark == "adv":
        check_adv_controls(rows, source)
    order = shuffled_order(len(parsed), run.shuffle_seed)
    return [Item(id=position, prompt=parsed[index][0], extra=parsed[index][1]) for position, index in enumerate(order)]


def data_source(run: RunConfig) -> str:
    """Where the run's prompts come from, for messages."""
    return str(resolve_data_path(run.data)) if run.data else f"the {run.benchmark} hub dataset"


def select(items: list[Item], run: RunConfig) -> list[Item]:
    """Items with start <= id < end, at most `limit` of them."""
    end = len(items) if run.end is None else min(run.end, len(items))
    chosen = items[run.start:end]
    return chosen if run.limit is None else chosen[:run.limit]


@dataclass(frozen=True)
class Selection:
    """A run's prompts: the whole dataset (whose fingerprint goes in the run header) and the selected part."""

    dataset: list
    """Every Item of the dataset, in id order."""
    items: list
    """The Items selected by run.start / run.end / run.limit."""
    source: str
    """Where they came from (a path or 'the HH hub dataset')."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.dataset)


def load_selection(run: RunConfig) -> Selection:
    """The run's dataset and its selection; an empty selection is an error."""
    items = load_dataset_items(run)
    chosen = select(items, run)
    if not chosen:
        raise DataError(f"no prompts selected: run.start={run.start}, run.end={run.end}, run.limit={run.limit} "
                        f"with {len(items)} prompts in {run.data or 'the hub dataset'}")
    return Selection(dataset=items, items=chosen, source=data_source(run))


def load_items(run: RunConfig) -> list[Item]:
    """The run's prompts: loaded, shuffled, selected by start/end/limit; an empty selection is an error."""
    return load_selection(run).items
