"""The trace page: its numbers equal the trace's, model text is escaped, the committed path and abandoned
branches are marked, older traces render, `rain trace` writes it, and a real headless Chromium renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fake_trace import QUESTION, legacy_trace, lock_trace, walk
from rain.cli import main
from rain.trace_page import render

STATS = {"inner_iterations": 50, "commits": 3, "non_greedy_commits": 1, "leader_changes": 2, "backtracks": 4,
         "widenings": 0, "seconds": 12.3456}
NUMBERS = ("visits", "real-visits", "value", "prior", "verdict")
SHOWN = {"visits": ".2f", "real": "d", "value": "+.3f", "prior": ".3f", "verdict": "+.2f"}


class Page(HTMLParser):
    """The page's nodes: per step, each li.node's data attributes, classes and the numbers its row shows."""

    def __init__(self, text: str):
        super().__init__()
        self.nodes, self.stack, self.step, self.span, self.ids = [], [], None, None, {}
        self.scripts, self.in_script, self.stats = [], False, {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = ""
            self.current_id = a["id"]
        if tag == "section" and "data-step" in a:
            self.step = int(a["data-step"])
        if tag == "li":
            classes = (a.get("class") or "").split()
            record = None
            if "node" in classes:
                record = {"step": self.step, "classes": classes, "shown": {}, "depth": int(a["data-depth"]),
                          **{k: a[f"data-{k}"] for k in NUMBERS}}
                self.nodes.append(record)
            self.stack.append(record)
        if tag == "span" and self.span is not None:
            self.nested += 1
        elif tag == "span" and self.stack and self.stack[-1] is not None:
            classes = (a.get("class") or "").split()
            if "num" in classes and len(classes) > 1 and classes[1] not in self.stack[-1]["shown"]:
                self.span, self.nested = classes[1], 0
                self.stack[-1]["shown"][self.span] = ""
        if tag == "td" and "data-stat" in a:
            self.span = ("stat", a["data-stat"])
            self.stats[a["data-stat"]] = ""
        if tag == "script":
            self.in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        self.current_id = None
        if tag == "li":
            self.stack.pop()
        if tag == "span" and self.span is not None and self.nested:
            self.nested -= 1
        elif tag in ("span", "td"):
            self.span = None
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts[-1] += data
        elif isinstance(self.span, tuple):
            self.stats[self.span[1]] += data
        elif self.span is not None and self.stack and self.stack[-1] is not None:
            self.stack[-1]["shown"][self.span] += data
        if getattr(self, "current_id", None):
            self.ids[self.current_id] += data


def as_number(text: str):
    return None if text == "none" else float(text)


def expected_nodes(trace):
    return sorted(((k, depth, n["visits"], n["real_visits"], n["value"], n["prior"], n["verdict"])
                   for k, step in enumerate(trace) for n, depth in walk(step["tree"])), key=repr)


def test_every_number_on_the_page_equals_the_trace():
    trace = lock_trace()
    page = Page(render(QUESTION, trace, STATS))
    got = sorted(((n["step"], n["depth"], *(as_number(n[k]) for k in NUMBERS)) for n in page.nodes), key=repr)
    assert got == expected_nodes(trace)
    for n in page.nodes:  # the visible row shows the same numbers, rounded
        for name, fmt in SHOWN.items():
            value = as_number(n["real-visits" if name == "real" else name])
            assert n["shown"][name] == ("\u2013" if value is None else format(int(value) if fmt == "d" else value, fmt))
    assert page.stats["seconds"] == "12.346" and page.stats["backtracks"] == "4"


def test_model_text_is_escaped_and_the_embedded_json_is_the_trace():
    trace = lock_trace()
    text = render(QUESTION, trace, STATS)
    assert "<script>alert" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in text
    page = Page(text)
    assert len(page.scripts) == 2  # the data and the code: nothing from the model opened or closed a script
    assert json.loads(page.scripts[0]) == {"question": QUESTION, "trace": trace}


def test_committed_path_and_abandoned_branches_are_marked():
    trace = lock_trace()
    page = Page(render(QUESTION, trace))
    for k, step in enumerate(trace):
        nodes = [n for n in page.nodes if n["step"] == k]
        committed = [n for n in nodes if "committed" in n["classes"]]
        assert len(committed) == 1 and as_number(committed[0]["value"]) == next(
            c["value"] for c in step["tree"]["children"] if c["committed"])
        assert sum("root" in n["classes"] for n in nodes) == 1
    step0 = [n for n in page.nodes if n["step"] == 0]
    # the LM's first choice ' Sure' and its whole subtree are abandoned; ' Lock' was never visited
    assert sorted(as_number(n["value"]) for n in step0 if "abandoned" in n["classes"]) == [-1.0, -0.667, -0.5, 0.0]
    assert [as_number(n["prior"]) for n in step0 if "unvisited" in n["classes"]] == [0.17]
    assert sum("kept" in n["classes"] for n in step0) == 2


def test_rewinds_and_non_greedy_commits_are_flagged_with_the_reason():
    trace = lock_trace()
    trace[1]["leader_changes"], trace[1]["backtracks"] = 3, 2  # per-step counts, when the search records them
    text = render(QUESTION, trace, STATS)
    # step 0 only: once in the step list and once in its heading, plus the sample badge in the summary sentence
    assert text.count('class="badge rewind"') == 3 and text.count('class="badge nongreedy"') == 3
    assert "rewound \u00d71" in text
    assert ("Not the LM's first choice: \u00ab Sure\u00bb (prior 0.520, value -0.667 over 6 real visits, last "
            "verdict -1.00) was set aside for \u00ab I\u00bb (prior 0.310, value +0.833") in text
    assert "The search rewound from 1 explored branch judged bad: \u00ab Sure\u00bb (value -0.667 after 6 real" in text
    assert "The LM's first choice was committed: \u00ab can&#x27;t\u00bb" in text
    assert "1 other explored branch, none judged bad. During this step: leading-child changes 3, backtracks 2." in text
    page = Page(text)
    assert (page.ids["step-count"], page.ids["rewound-steps"], page.ids["non-greedy-steps"]) == ("3", "1", "1")


def test_older_traces_render_as_one_level_trees():
    page = Page(render("q", legacy_trace()))
    assert [(n["step"], as_number(n["value"])) for n in page.nodes if "committed" in n["classes"]] == [(0, 0.7),
                                                                                                        (1, 0.9)]
    assert len(page.nodes) == 5  # two roots and three children


def test_empty_trace_says_so():
    assert "The trace is empty" in render("q", [])


def test_rain_trace_command_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "t.html"
    argv = ["trace", "How do I bake bread?", "--out", str(out), f"--model.name={tiny_dir}", "--prompt.format=chat",
            "--max_new_tokens=4", "--max_iterations=3", "--min_fresh_iterations=2", "--segment_lengths=[1,2]"]
    assert main(argv) == 0
    page = Page(out.read_text(encoding="utf-8"))
    printed = capsys.readouterr().out
    steps = int(printed.split("trace of ")[1].split()[0])
    assert steps >= 1 and len({n["step"] for n in page.nodes}) == steps
    assert sum("committed" in n["classes"] for n in page.nodes) == steps
    assert main(["trace", "  ", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "rain trace: error: question is empty"


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_renders_in_headless_chromium(tmp_path):
    trace = lock_trace()
    page_file = tmp_path / "trace.html"
    page_file.write_text(render(QUESTION, trace, STATS, answer=" I can't help"), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]
    dom = subprocess.run(flags + ["--dump-dom", page_file.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Page(dom.stdout)
    total = sum(1 for step in trace for _ in walk(step["tree"]))
    assert page.ids["node-count"] == str(total)  # filled in by the page's script: it ran without error
    assert page.ids["abandoned-count"] == "5"
    got = sorted(((n["step"], n["depth"], *(as_number(n[k]) for k in NUMBERS)) for n in page.nodes), key=repr)
    assert got == expected_nodes(trace)
    shot = tmp_path / "shot.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,1000", page_file.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 20_000  # a real rendering, not a blank page
