"""The hostile-user sweep behind docs/reliability.md: every bad input and fault below is tried through the real
command lines (`rain run` / allocation.py, `rain generate`, `rain judge`, `rain report`, `python -m rain.worker`),
each in a fresh process, offline, on CPU, with the tiny test model or the fake answerer.

    HF_HUB_OFFLINE=1 python scripts/reliability_sweep.py [--markdown docs/reliability-sweep.md]

For each case it checks the exit status it expects (0 done, 1 done with failed prompts or a crashed worker,
2 a user's mistake or a fault, 130 interrupted), that no Python traceback reaches the terminal, and, where
the case is an error, that the message is one line and holds what it must name. It prints a table and
the totals, and exits 1 if any case misbehaves. The behaviour behind each row is also asserted by the
pytest suite (tests/test_*.py); this sweep shows what a user sees.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class Case:
    group: str
    what: str
    args: list
    expect: int
    names: str = ""
    """A substring the output must hold (the file, field or value named)."""
    env: dict | None = None
    setup: object = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rain-sweep-"))
    try:
        cases = build_cases(work)
        rows, bad = [], 0
        for number, case in enumerate(cases, start=1):
            if case.setup:
                case.setup()
            started = time.perf_counter()
            result = run(case, work)
            out = result.stdout + result.stderr
            traceback = "Traceback (most recent call last)" in out
            message = first_message(result.stderr)
            ok = result.returncode == case.expect and not traceback and (case.names in out)
            if case.expect == 2:
                ok = ok and message is not None and "\n" not in message
            bad += not ok
            rows.append((number, case, result.returncode, traceback, message, ok, time.perf_counter() - started))
            print(f"{number:3d} {'ok ' if ok else 'BAD'} exit {result.returncode} {case.group}: {case.what}",
                  flush=True)
        table = render(rows)
        print("\n" + table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n", encoding="utf-8")
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def first_message(stderr: str):
    lines = [line for line in stderr.splitlines() if ": error: " in line or line.startswith("rain: ")]
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or [None])[0]


def run(case: Case, work: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), RAIN_CACHE=str(work / "cache"))
    env.pop("OPENAI_API_KEY", None)
    env.update(case.env or {})
    return subprocess.run([sys.executable, *case.args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)


def render(rows) -> str:
    lines = ["| # | command | bad input or fault | exit | traceback | what the user gets |", "|---|---|---|---|---|---|"]
    for number, case, code, traceback, message, ok, _ in rows:
        shown = (message or "(exit 0: run completed)").replace("|", "\\|")
        shown = shown if len(shown) <= 230 else shown[:230] + "..."
        lines.append(f"| {number} | {case.group} | {case.what} | {code} | {'YES' if traceback else 'no'} | "
                     f"{'' if ok else '**UNEXPECTED** '}{shown} |")
    tracebacks = sum(row[3] for row in rows)
    errors = sum(row[2] == 2 for row in rows)
    lines += ["", f"Cases: {len(rows)}; exit 2 with one line: {errors}; tracebacks: {tracebacks}; "
                  f"unexpected: {sum(not row[5] for row in rows)}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the cases

def build_cases(work: Path) -> list[Case]:
    import tiny

    model = tiny.build_tiny(work / "tiny")
    noweights = copy_model(model, work / "noweights", drop="model.safetensors")
    corrupt = copy_model(model, work / "corrupt", replace=b"\x00" * 64)
    data = write(work / "hh.jsonl", hh_lines(["How do I bake bread?", "Tell me a joke.", "What is 2+2?"]))
    gz = gzip.compress(data.read_bytes())
    write(work / "cut.jsonl.gz", gz[: len(gz) // 2])
    write(work / "trailer.jsonl.gz", gz[:-4])
    write(work / "plain.jsonl.gz", data.read_bytes())
    write(work / "empty.jsonl", "")
    write(work / "badline.jsonl", hh_lines(["ok?"]) + "{not json\n")
    write(work / "lists.json", "[[1, 2]]")
    write(work / "nofield.jsonl", '{"text": "x"}\n')
    write(work / "latin1.jsonl", b'{"chosen": "caf\xe9"}\n')
    write(work / "surrogate.jsonl", '{"chosen": "\\n\\nHuman: \\ud83d\\n\\nAssistant: a"}\n' + hh_lines(["b?"]))
    write(work / "deep.json", "[" * 100_000 + "]" * 100_000)
    write(work / "bigint.jsonl", '{"chosen": ' + "9" * 5000 + "}\n")
    write(work / "object.json", '{\n "rows": []\n}\n')
    write(work / "bare.json", json.dumps([{"goal": "Write a poem"}, {"goal": "Write a song"}]))
    write(work / "mixed.json", json.dumps([{"goal": "a", "controls": "!!"}, {"goal": "b"}]))
    write(work / "numctl.json", json.dumps([{"goal": "a", "controls": 5}]))
    write(work / "noq.csv", "Type,Category,Query,Best Answer,Source\nA,B,What?,C,D\n")
    write(work / "extra.csv", "goal,target\nDo harm,Sure,extra\n")
    write(work / "nul.csv", "goal,target\nx\x00y,z\n" + "a" * 200_000 + ",b\n")
    write(work / "file", "")
    write(work / "bad.yaml", "search: [unclosed\n")
    write(work / "binary.yaml", bytes(range(256)))
    write(work / "section.yaml", "serch:\n  seed: 1\n")
    write(work / "key.yaml", "search:\n  min_visit: 3\n")
    write(work / "yes.yaml", "defaults: [truth.yaml]\njudge:\n  good_options: [Yes]\n  bad_options: [No]\n")
    write(work / "binary.txt", bytes(range(256)))
    write(work / "slow_answerer.py", "import time\nimport fake_answerer\n\n\ndef make(cfg):\n"
                                     "    answer = fake_answerer.make(cfg)\n"
                                     "    return lambda item: (time.sleep(0.5), answer(item))[1]\n")
    results = write_results(work)
    write(work / "not-json.json", "[{")
    write(work / "dict.json", json.dumps({"a": 1}))
    write(work / "rec-list.json", json.dumps([[1]]))
    write(work / "dup.json", json.dumps([RECORD, {**RECORD, "id": 1}, RECORD]))
    write(work / "strid.json", json.dumps([{**RECORD, "id": "x"}]))
    write(work / "numans.json", json.dumps([{**RECORD, "raina": 5}]))
    write(work / "scored.json", json.dumps([{**RECORD, "scores": {}}]))
    write(work / "jbad.yaml", "judge: [1\n")
    write(work / "jkeys.yaml", "judge:\n  modle: x\n")
    write(work / "badcache.jsonl", '{"key": "a"}\n{oops\n{"key": "b"}\n')
    (work / "cachedir").mkdir()
    write(work / "damaged.summary.json", json.dumps({"benchmark": "HH", "rates": []}))
    write(work / "notjson.summary.json", "{")

    tiny_cfg = write(work / "tiny.yaml", f"model:\n  name: {model}\nprompt:\n  format: chat\nsearch:\n"
                                         "  max_new_tokens: 3\n  max_iterations: 2\n  min_fresh_iterations: 1\n"
                                         f"run:\n  data: {data}\n  shuffle_seed: null\n")
    hh = [str(ROOT / "HH" / "allocation.py")]
    adv = [str(ROOT / "adv" / "allocation.py")]
    truth = [str(ROOT / "truth" / "allocation.py")]
    fake = ["--answerer", "fake_answerer:make"]
    rain = ["-m", "rain.cli"]
    judge = rain + ["judge"]
    cases = []

    def add(group, what, args, expect=2, names="", **kw):
        cases.append(Case(group, what, args, expect, names, **kw))

    d = lambda name: ["--data", str(work / name)]  # noqa: E731
    o = lambda name: ["--outdir", str(work / "out" / name)]  # noqa: E731

    # data files
    add("rain run HH", "no --data, offline, no `datasets`", rain + ["run", "HH", "--limit", "1"] + o("nodata"),
        names="--data FILE")
    add("HH/allocation.py", "--data file missing", hh + d("missing.jsonl") + fake, names="missing.jsonl")
    add("HH/allocation.py", "--data is a folder", hh + ["--data", str(work / "cachedir")] + fake, names="is a folder")
    add("HH/allocation.py", "empty data file", hh + d("empty.jsonl") + fake, names="the dataset is empty")
    add("HH/allocation.py", ".jsonl.gz truncated mid-member", hh + d("cut.jsonl.gz") + fake, names="cut.jsonl.gz")
    add("HH/allocation.py", ".jsonl.gz with its trailer cut", hh + d("trailer.jsonl.gz") + fake, names="trailer")
    add("HH/allocation.py", "plain text named .gz", hh + d("plain.jsonl.gz") + fake, names="plain.jsonl.gz")
    add("HH/allocation.py", "invalid JSON on line 2", hh + d("badline.jsonl") + fake, names="line 2")
    add("HH/allocation.py", "JSON list of lists", hh + d("lists.json") + fake, names="item 0")
    add("HH/allocation.py", "row without a transcript field", hh + d("nofield.jsonl") + fake, names="missing field")
    add("HH/allocation.py", "Latin-1 bytes, not UTF-8", hh + d("latin1.jsonl") + fake, names="not UTF-8")
    add("HH/allocation.py", "lone surrogate \\ud83d in a prompt", hh + d("surrogate.jsonl") + fake,
        names="line 1: field 'chosen' is not valid Unicode")
    add("HH/allocation.py", "JSON nested 100,000 deep", hh + d("deep.json") + fake, names="nested too deeply")
    add("HH/allocation.py", "a 5,000-digit number", hh + d("bigint.jsonl") + fake, names="line 1")
    add("HH/allocation.py", "one JSON object instead of a list", hh + d("object.json") + fake, names="one JSON object")
    add("adv/allocation.py", "no --data (adv has no hub default)", adv + fake, names="run.data must be set")
    add("adv/allocation.py", "no row has controls (legitimate: warning with counts)", adv + d("bare.json") + fake
        + o("bare"), expect=0, names="none of the 2 adv rows has 'controls'")
    add("adv/allocation.py", "some rows without controls", adv + d("mixed.json") + fake, names="item 1: no 'controls'")
    add("adv/allocation.py", "controls is a number", adv + d("numctl.json") + fake, names="'controls' must be a string")
    add("truth/allocation.py", "CSV without a Question column", truth + d("noq.csv") + fake, names="line 2")
    add("adv/allocation.py", "CSV row with more values than columns", adv + d("extra.csv") + fake, names="line 2")
    add("adv/allocation.py", "CSV with a NUL byte and a 200 kB field", adv + d("nul.csv") + fake, names="nul.csv")
    # launcher options
    add("HH/allocation.py", "--nump 0", hh + ["--nump", "0"] + d("hh.jsonl") + fake, names="--nump must be >= 1")
    add("HH/allocation.py", "--nump abc", hh + ["--nump", "abc"], names="invalid int value")
    add("HH/allocation.py", "--start 5 --end 2", hh + ["--start", "5", "--end", "2"] + d("hh.jsonl") + fake,
        names="run.end")
    add("HH/allocation.py", "--limit -1", hh + ["--limit", "-1"] + d("hh.jsonl") + fake, names="run.limit")
    add("HH/allocation.py", "--start past the end", hh + ["--start", "100"] + d("hh.jsonl") + fake,
        names="no prompts selected")
    add("HH/allocation.py", "--outdir below a file", hh + d("hh.jsonl") + ["--outdir", str(work / "file" / "o")] + fake,
        names="cannot create output folder")
    add("HH/allocation.py", "--outdir on a read-only filesystem", hh + d("hh.jsonl") + ["--outdir", "/proc/rain-out"]
        + fake, names="/proc/rain-out")
    add("HH/allocation.py", "--name with a folder part", hh + d("hh.jsonl") + ["--name", "../escape"] + fake,
        names="run.name must be a plain file name")
    add("HH/allocation.py", "--bogus (not an override)", hh + ["--bogus"], names="unrecognised arguments")
    add("HH/allocation.py", "--run.benchmark=adv on the HH launcher", hh + ["--run.benchmark=adv"] + fake,
        names="use ../adv/allocation.py")
    add("HH/allocation.py", "--answerer module missing", hh + d("hh.jsonl") + o("ans") + ["--answerer", "nosuch:make"],
        names="cannot import 'nosuch'")
    add("HH/allocation.py", "--answerer without a colon", hh + d("hh.jsonl") + o("ans2") + ["--answerer", "nocolon"],
        names="module:function")
    # configs
    add("HH/allocation.py", "--config file missing", hh + ["--config", "missing.yaml"], names="missing.yaml")
    add("HH/allocation.py", "--config is a folder", hh + ["--config", str(work / "cachedir")], names="cachedir")
    add("HH/allocation.py", "--config invalid YAML", hh + ["--config", "bad.yaml"], names="not valid YAML")
    add("HH/allocation.py", "--config binary bytes", hh + ["--config", "binary.yaml"], names="not a UTF-8 text file")
    add("HH/allocation.py", "--config unknown section", hh + ["--config", "section.yaml"], names="unknown section")
    add("HH/allocation.py", "--config unknown key", hh + ["--config", "key.yaml"], names="valid keys")
    add("HH/allocation.py", "--search.max_iterations=0", hh + ["--search.max_iterations=0"], names="max_iterations")
    add("HH/allocation.py", "--temperature=1e-40 (NaN probabilities)", hh + ["--temperature=1e-40"],
        names="search.temperature must be >= 0.001")
    add("HH/allocation.py", "--temperature=.nan", hh + ["--temperature=.nan"], names="finite")
    add("HH/allocation.py", "--model.device=cuda:abc", hh + ["--model.device=cuda:abc"], names="cuda:N")
    add("truth/allocation.py", "unquoted [Yes] in a YAML judge option", truth + ["--config", "yes.yaml"],
        names="quote it")
    add("HH/allocation.py", "judge option C the options block never offers", hh + d("hh.jsonl") + fake
        + ["--judge.good_options=[A, C]"], names="offers only A, B")
    add("HH/allocation.py", "the same option for good and bad", hh + ["--judge.bad_options=[A, A]",
                                                                   "--judge.good_options=[A, A]"],
        names="must be different")
    add("HH/allocation.py", "--prompt.fewshot_file missing", hh + d("hh.jsonl") + fake + ["--prompt.format=fewshot",
        "--prompt.fewshot_file=nope.txt"], names="nope.txt")
    add("HH/allocation.py", "judge instruction file is binary", hh + d("hh.jsonl") + fake
        + [f"--judge.instruction_file={work / 'binary.txt'}"], names="not UTF-8 text")
    # models
    add("HH/allocation.py", "--model folder missing", hh + d("hh.jsonl") + ["--model", str(work / "none")],
        names="model folder not found")
    add("HH/allocation.py", "--model folder with config.json, no weights", hh + d("hh.jsonl") + ["--model",
        str(noweights)], names="no weights")
    add("HH/allocation.py", "--model with corrupt safetensors (found in the worker)", hh + ["--config", str(tiny_cfg),
        "--model", str(corrupt), "--mode", "vanilla"] + o("corrupt"), names="SafetensorError")
    add("HH/allocation.py", "--model hub id not cached, offline", hh + d("hh.jsonl") + ["--model", "someorg/none"],
        names="not in the Hugging Face cache")
    add("HH/allocation.py", "--model not a valid hub id", hh + d("hh.jsonl") + ["--model", "not a/valid"],
        names="not a valid hub id"[4:])
    add("HH/allocation.py", "--model missing .gguf", hh + d("hh.jsonl") + ["--model", "x.gguf"], names="GGUF")
    add("HH/allocation.py", "--model.device=cuda without CUDA", hh + d("hh.jsonl") + ["--model", str(model),
        "--model.device=cuda"], names="sees no CUDA GPU")
    add("HH/allocation.py", "--model.device=cuda:3 without CUDA", hh + d("hh.jsonl") + ["--model", str(model),
        "--model.device=cuda:3"], names="model.device=cuda:3")
    # faults during runs
    add("HH/allocation.py", "one prompt fails (answerer raises): error record, others answered", hh + d("hh.jsonl")
        + fake + o("fail"), expect=1, names="recorded with status 'error' (ids 0", env={"FAKE_FAIL_IDS": "0"})
    add("HH/allocation.py", "... rerun with --retry-errors", hh + d("hh.jsonl") + fake + o("fail") + ["--retry-errors"],
        expect=0, names="1 prompts to answer")
    add("HH/allocation.py", "a worker process dies (exit 1)", hh + d("hh.jsonl") + fake + o("crash"), expect=1,
        names="shard 0 of 1 failed", env={"FAKE_CRASH_IDS": "1"})
    add("HH/allocation.py", "... rerun resumes", hh + d("hh.jsonl") + fake + o("crash"), expect=0,
        names="2 prompts to answer")
    grow = ["--data", str(work / "grow.jsonl"), "--outdir", str(work / "out" / "grow")] + fake
    add("HH/allocation.py", "data file grown from 3 to 5 prompts under a finished run", hh + grow,
        names="the prompts changed since this run started", setup=lambda: grow_run(work, hh + grow))
    add("HH/allocation.py", "shard damaged before its last line", hh + grow, names="damaged before its last line",
        setup=lambda: damage_shard(work))
    add("HH/allocation.py", "run header (meta.json) damaged", hh + grow, names="run header is unreadable",
        setup=lambda: damage_meta(work))
    busy = hh + ["--data", str(work / "many.jsonl"), "--outdir", str(work / "out" / "busy")]
    add("HH/allocation.py", "a second launcher on a running run", busy + fake, names="is running run",
        setup=lambda: start_slow(work, busy))
    add("HH/allocation.py", "rerun once the first launcher has finished", busy + fake, expect=0,
        names="already answered", setup=wait_slow)
    # rain generate
    add("rain generate", "empty question", rain + ["generate", "", "--max_new_tokens=1"], names="question is empty")
    add("rain generate", "--config missing", rain + ["generate", "hi", "--config", "nope.yaml"], names="nope.yaml")
    add("rain generate", "model folder without weights", rain + ["generate", "hi", f"--model.name={noweights}"],
        names="no weights")
    add("rain generate", "--model.device=cuda without CUDA", rain + ["generate", "hi", f"--model.name={model}",
                                                                   "--model.device=cuda"], names="no CUDA GPU")
    # rain judge
    add("rain judge", "results file missing", judge + ["missing.json"], names="does not exist")
    add("rain judge", "results path is a folder", judge + [str(work / "cachedir")], names="is a folder")
    add("rain judge", "results not valid JSON", judge + ["not-json.json"], names="not valid JSON")
    add("rain judge", "results a JSON object", judge + ["dict.json"], names="expected a JSON list")
    add("rain judge", "a record that is a list", judge + ["rec-list.json"], names="record 0")
    add("rain judge", "a duplicated record id", judge + ["dup.json", "--benchmark", "adv"], names="both have id 0")
    add("rain judge", "a string id", judge + ["strid.json", "--benchmark", "adv"], names="not an integer")
    add("rain judge", "an answer that is a number", judge + ["numans.json", "--benchmark", "adv"], names="'raina'")
    add("rain judge", "an already scored file", judge + ["scored.json", "--benchmark", "adv"], names="already scored")
    add("rain judge", "no key in OPENAI_API_KEY", judge + [str(results), "--benchmark", "HH"], names="OPENAI_API_KEY")
    add("rain judge", "--concurrency 0", judge + [str(results), "--benchmark", "HH", "--no-key", "--concurrency", "0"],
        names="concurrency")
    add("rain judge", "--base-url ftp://x", judge + [str(results), "--benchmark", "HH", "--base-url", "ftp://x"],
        names="http(s) URL")
    add("rain judge", "--judge local without --local-model", judge + [str(results), "--benchmark", "HH", "--judge",
                                                                     "local"], names="--local-model")
    add("rain judge", "--local-model folder missing", judge + [str(results), "--benchmark", "HH", "--judge", "local",
                                                              "--local-model", str(work / "none")],
        names="cannot load local judge model")
    add("rain judge", "--config invalid YAML", judge + [str(results), "--benchmark", "HH", "--config", "jbad.yaml"], names="not valid YAML")
    add("rain judge", "--config unknown key", judge + [str(results), "--benchmark", "HH", "--config", "jkeys.yaml"], names="modle")
    add("rain judge", "verdict cache damaged mid-file", judge + [str(results), "--benchmark", "adv", "--judge", "api",
                                                               "--no-key", "--cache", "badcache.jsonl"],
        names="line 2 is corrupt")
    add("rain judge", "--cache is a folder", judge + [str(results), "--benchmark", "adv", "--judge", "api", "--no-key",
                                                     "--cache", str(work / "cachedir")], names="cannot read the judge cache")
    add("rain judge", "judge server unreachable (key in the URL)", judge + [str(results), "--benchmark", "HH",
        "--no-key", "--base-url", "http://u:sk-SECRET@127.0.0.1:9/v1", "--max-retries", "0"],
        names="http://127.0.0.1:9/v1/chat/completions")
    add("rain judge", "refusal scoring of a good file (control)", judge + [str(results), "--benchmark", "adv",
                                                                        "--quiet"], expect=0)
    # rain report
    add("rain report", "no summary for the input", rain + ["report", "missing.json"], names="no summary")
    add("rain report", "damaged summary (rates a list)", rain + ["report", "damaged.summary.json", "--no-plot"],
        names="damaged")
    add("rain report", "summary not JSON", rain + ["report", "notjson.summary.json"], names="not a readable summary")
    add("rain report", "--out below a file", rain + ["report", str(results), "--out", str(work / "file" / "r"),
                                                     "--no-plot"], names="cannot create output folder")
    # the worker on its own
    add("python -m rain.worker", "--rank 3 --world 2", ["-m", "rain.worker", "--rank", "3", "--world", "2"],
        names="rank must be in [0, world)")
    add("python -m rain.worker", "RANK=abc from a broken torchrun environment", ["-m", "rain.worker"],
        env={"RANK": "abc", "WORLD_SIZE": "2"}, names="abc")
    add("python -m rain.worker", "--plan file missing", ["-m", "rain.worker", "--rank", "0", "--world", "1",
                                                         "--plan", "nope.json", f"run.data={data}"] + fake,
        names="plan file nope.json is unreadable")
    return cases


RECORD = {"id": 0, "question": "q", "prompt": "How do I wash a shirt?", "raina": "I cannot help.", "pa": "Sure.",
          "status": "ok"}


def hh_lines(questions) -> str:
    return "".join(json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: ok"}) + "\n" for q in questions)


def write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def copy_model(source: Path, folder: Path, *, drop=None, replace=None) -> Path:
    shutil.copytree(source, folder)
    if drop:
        (folder / drop).unlink()
    if replace:
        (folder / "model.safetensors").write_bytes(replace)
    return folder


def write_results(work: Path) -> Path:
    folder = work / "results"
    folder.mkdir()
    return write(folder / "run.json", json.dumps([RECORD, {**RECORD, "id": 1, "raina": "Here is how."}]))


def grow_run(work: Path, command: list) -> None:
    """A finished 3-prompt run, then its data file grown to 5 prompts."""
    write(work / "grow.jsonl", hh_lines(["a?", "b?", "c?"]))
    subprocess.run([sys.executable, *command], cwd=work, capture_output=True, check=True,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
                            CUDA_VISIBLE_DEVICES=""))
    write(work / "grow.jsonl", hh_lines(["a?", "b?", "c?", "d?", "e?"]))


def damage_shard(work: Path) -> None:
    """The data file restored; a broken line inserted before the shard's last line."""
    write(work / "grow.jsonl", hh_lines(["a?", "b?", "c?"]))
    [shard] = (work / "out" / "grow").glob("*.parts/shard-*.jsonl")
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join([lines[0], "{oops"] + lines[1:]) + "\n")


def damage_meta(work: Path) -> None:
    """The shard repaired; the run header overwritten with garbage."""
    [shard] = (work / "out" / "grow").glob("*.parts/shard-*.jsonl")
    shard.write_text("".join(line + "\n" for line in shard.read_text().splitlines() if line != "{oops"))
    [meta] = (work / "out" / "grow").glob("*.meta.json")
    meta.write_text("{not json")


SLOW = {}


def start_slow(work: Path, command: list) -> None:
    """A launcher answering 6 prompts at 0.5 s each in the background, until it holds the run lock."""
    write(work / "many.jsonl", hh_lines([f"q{i}?" for i in range(6)]))
    SLOW["proc"] = subprocess.Popen([sys.executable, *command, "--answerer", "slow_answerer:make"], cwd=work,
                                    env=dict(os.environ, CUDA_VISIBLE_DEVICES="",
                                             PYTHONPATH=os.pathsep.join([str(work), str(ROOT / "tests"), str(ROOT)])),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        locks = list((work / "out" / "busy").glob("*.lock"))
        if locks and locks[0].read_text().strip():
            return
        time.sleep(0.1)


def wait_slow() -> None:
    SLOW["proc"].wait(timeout=300)


if __name__ == "__main__":
    sys.exit(main())
