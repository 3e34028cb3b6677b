"""Class 4: every bad data file is one DataError line naming the file (and the line and field where there is
one), never a traceback; random malformed rows and values (Hypothesis) always give a named error or a
valid parse, for HH .jsonl / .jsonl.gz, adv JSON and CSV, and TruthfulQA CSV."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launch_helpers import hh_file, one_line_error, run_launcher
from rain.config import RunConfig
from rain.tasks import DataError, DataWarning, load_items

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def good_hh_gz(path: Path, n: int = 3) -> bytes:
    text = "".join(json.dumps({"chosen": f"\n\nHuman: q{i}?\n\nAssistant: a"}) + "\n" for i in range(n))
    return gzip.compress(text.encode())


def expect_data_error(path: Path, benchmark: str = "HH", **run) -> str:
    with pytest.raises(DataError) as err:
        load_items(RunConfig(benchmark=benchmark, data=str(path), **run))
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# ----------------------------------------------------------------------------- the issue's .jsonl.gz files

def test_truncated_gzip_member(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    data = good_hh_gz(path, 50)
    path.write_bytes(data[: len(data) // 2])
    assert "not a readable gzip file" in expect_data_error(path)


def test_gzip_with_its_trailer_cut(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(good_hh_gz(path)[:-4])
    assert "not a readable gzip file" in expect_data_error(path)


def test_plain_text_named_gz(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    path.write_text('{"chosen": "\\n\\nHuman: q?\\n\\nAssistant: a"}\n')
    assert "drop the .gz from the name if it is plain text" in expect_data_error(path)


def test_gzip_of_binary_garbage_and_an_empty_gz(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress(bytes(range(256)) * 4))
    assert "not UTF-8 text" in expect_data_error(path)
    path.write_bytes(b"")
    assert "the dataset is empty" in expect_data_error(path)


def test_launcher_on_a_cut_gz_is_one_line_exit_2(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(good_hh_gz(path)[:-4])
    default = tmp_path / "default.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  outdir: {tmp_path / 'out'}\n")
    result = run_launcher(default, "--data", str(path), "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert result.returncode == 2 and str(path) in one_line_error(result.stderr)


# ----------------------------------------------------------------------------- other broken files

@pytest.mark.parametrize("name, content, expected", [
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("bigint.jsonl", '{"chosen": ' + "9" * 5000 + "}\n", "line 1: not valid JSON"),
    ("object.json", '{\n "rows": []\n}\n', "one JSON object; expected a JSON list of records"),
    ("list-of-lists.json", "[[1, 2]]", "item 0: expected a JSON object, got list"),
    ("nul.csv", "goal,target\nx\x00y,z\n" + "a" * 200_000 + ",b\n", "not valid CSV"),
    ("latin1.jsonl", b'{"chosen": "caf\xe9"}\n', "not UTF-8 text"),
    ("answers.jsonl", json.dumps({"question": "Q?", "best_answer": "A", "correct_answers": [1, None]}) + "\n",
     "field 'correct_answers' must be a list of strings"),
])
def test_broken_files_name_the_file_and_what_is_wrong(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    benchmark = {"nul.csv": "adv", "answers.jsonl": "truth"}.get(name, "HH")
    assert expected in expect_data_error(path, benchmark)


def test_a_folder_given_as_data(tmp_path):
    assert "is a folder" in expect_data_error(tmp_path)


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = hh_file(tmp_path / "hh.jsonl", ["q?"])

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert "cannot read the data file: Permission denied" in expect_data_error(path)


# ----------------------------------------------------------------------------- Hypothesis: random rows

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
texts = st.text(max_size=60)  # any code point, surrogates included
transcripts = st.builds(lambda a, b, c: f"{a}Human: {b}{c}Assistant: x", st.sampled_from(["", "\n\n", "junk "]),
                        texts, st.sampled_from(["\n\n", "", " "]))


def field_values(extra_text=texts):
    return extra_text | json_values


def rows_with(keys: list[str], values) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys + ["other"]), values, max_size=len(keys) + 1)


def check_load(path: Path, benchmark: str) -> None:
    """The property: a valid parse (prompts are non-empty valid strings) or one DataError line naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        try:
            items = load_items(RunConfig(benchmark=benchmark, data=str(path), shuffle_seed=None))
        except DataError as err:
            assert "\n" not in str(err) and str(path) in str(err), str(err)
            return
    assert items and all(isinstance(i.prompt, str) and i.prompt.strip() for i in items)
    for item in items:
        json.dumps(item.extra, ensure_ascii=False).encode("utf-8")  # records can be written


def write_in(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"chosen": transcripts})
                     | rows_with(["chosen", "transcript", "rejected"], transcripts | field_values()), max_size=5),
       junk=st.lists(st.text(max_size=20), max_size=2), gz=st.booleans(), cut=st.integers(0, 40))
def test_hypothesis_hh_jsonl_and_gz(rows, junk, gz, cut):
    lines = [json.dumps(row) for row in rows] + junk
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if gz:
        data = gzip.compress(data)
        data = data[:len(data) - cut] if cut < len(data) else data
    with tempfile.TemporaryDirectory() as folder:
        check_load(write_in(folder, "hh.jsonl.gz" if gz else "hh.jsonl", data), "HH")


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"goal": texts}, optional={"controls": texts | st.none()})
                     | rows_with(["goal", "controls", "target"], field_values()) | json_values, max_size=5))
def test_hypothesis_adv_json(rows):
    with tempfile.TemporaryDirectory() as folder:
        check_load(write_in(folder, "gcg.json", json.dumps(rows).encode()), "adv")


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "surrogatepass")


@FUZZ
@given(header=st.lists(st.sampled_from(["goal", "target", "controls", "x"]), min_size=1, max_size=4),
       rows=st.lists(st.lists(texts, max_size=5), max_size=5), raw=st.none() | st.binary(max_size=80))
def test_hypothesis_adv_csv(header, rows, raw):
    with tempfile.TemporaryDirectory() as folder:
        check_load(write_in(folder, "harmful_behaviors.csv", raw if raw is not None else csv_bytes(header, rows)),
                   "adv")


TRUTH_HEADER = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]


@FUZZ
@given(header=st.permutations(TRUTH_HEADER).map(lambda h: h[:7]) | st.lists(st.sampled_from(TRUTH_HEADER), max_size=7),
       rows=st.lists(st.lists(texts, min_size=7, max_size=7) | st.lists(texts, max_size=8), max_size=5),
       bom=st.booleans())
def test_hypothesis_truthfulqa_csv(header, rows, bom):
    data = csv_bytes(header, rows)
    with tempfile.TemporaryDirectory() as folder:
        check_load(write_in(folder, "TruthfulQA.csv", (b"\xef\xbb\xbf" if bom else b"") + data), "truth")


def test_hypothesis_finds_valid_parses_too(tmp_path):
    """The fuzz property is not vacuous: well-formed files of each kind parse."""
    hh = hh_file(tmp_path / "hh.jsonl", ["q?"])
    adv = tmp_path / "gcg.json"
    adv.write_text(json.dumps([{"goal": "g", "controls": "c"}]))
    truth = tmp_path / "t.csv"
    truth.write_bytes(csv_bytes(TRUTH_HEADER, [["t", "c", "Q?", "A", "A", "B", "s"]]))
    for path, benchmark in ((hh, "HH"), (adv, "adv"), (truth, "truth")):
        assert load_items(RunConfig(benchmark=benchmark, data=str(path)))
