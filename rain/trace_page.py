"""The search as one self-contained HTML page: every committed step's tree, the committed path, the abandoned
branches, the judge's verdicts, and the answer step by step.

`render(question, trace, stats) -> str` takes `GenerationResult.trace` (recorded with `search.trace=true`):
one entry per committed step,

    {"step", "answer_before", "iterations", "committed" (the committed segment's text), "children", "tree"}

where `tree` is the step's root node, recursively
`{"segment", "token_ids", "visits", "real_visits", "value", "prior", "verdict", "judged", "committed",
"children"}`. An entry without `tree` (the older trace: `committed` holds the answer before the step and
`children` the root's children) is shown as a one-level tree whose most-visited child is the commit.

The page needs no server and no network: CSS and JS are inline, the trace itself is embedded as JSON.
Every text from the model is HTML-escaped. Knows: the trace schema and HTML. Does not know: the search.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Optional

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;
 color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:22px 0 8px}
.question{font-size:16px;background:#f4f4f6;padding:8px 12px;border-radius:6px;white-space:pre-wrap}
.answer{font:14px/1.7 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;background:#fbfbfd;
 border:1px solid #ddd;border-radius:6px;padding:10px 12px}
.answer a{color:inherit;text-decoration:none;border-bottom:3px solid var(--c);padding:0 1px}
.answer a.flagged{background:#fff1d6}
.answer sup{font-size:10px;color:#888}
table.stats{border-collapse:collapse}table.stats td{padding:2px 12px 2px 0}
table.stats td.k{color:#555}
.steps{margin:0;padding-left:22px}.steps li{margin:2px 0}
.badge{display:inline-block;font-size:11px;border-radius:9px;padding:0 7px;margin-left:6px;background:#eee;color:#444}
.badge.rewind{background:#f6c2b8;color:#6b1a0b}.badge.nongreedy{background:#ffd98a;color:#5a3b00}
.step{border-top:1px solid #ddd;margin-top:18px}
.why{background:#fff8e8;border-left:4px solid #f0b000;padding:6px 10px;margin:6px 0 10px}
.why.plain{background:#f2f8f2;border-color:#7bb77b}
ul.tree,ul.tree ul{list-style:none;margin:0;padding-left:22px}
ul.tree{padding-left:0}
.row{display:grid;grid-template-columns:minmax(260px,1fr) 70px 44px 120px 62px 62px;gap:8px;align-items:center;
 padding:1px 4px;border-radius:4px}
.head{font-size:12px;color:#666;font-weight:600;margin-left:22px}
summary{cursor:pointer;list-style-position:outside}
.leaf{margin-left:0}
.seg{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.ws{color:#bbb}
.num{font-variant-numeric:tabular-nums;text-align:right;font-size:13px}
.bar{display:inline-block;height:8px;border-radius:2px;vertical-align:middle;margin-right:4px}
li.committed>details>summary .row,li.committed>.row{background:#dff3df;font-weight:600;outline:2px solid #59a859}
li.root>details>summary .row{background:#eef}
li.abandoned{opacity:.55}
li.unvisited .seg{color:#999}
details.more>summary{color:#888;font-size:12px}
.judged{font-size:12px;color:#555;margin:2px 0 4px 4px;white-space:pre-wrap;font-family:ui-monospace,monospace;
 border-left:2px solid #ccc;padding-left:6px;max-height:8em;overflow:auto}
.controls button{margin-right:6px}
.legend span{margin-right:14px}
"""

SCRIPT = """
(function(){
  var all=function(sel){return Array.prototype.slice.call(document.querySelectorAll(sel));};
  document.getElementById('expand-all').onclick=function(){all('details').forEach(function(d){d.open=true;});};
  document.getElementById('collapse-abandoned').onclick=function(){
    all('li.abandoned>details, details.more').forEach(function(d){d.open=false;});};
  var nodes=all('li.node');
  document.getElementById('node-count').textContent=String(nodes.length);
  document.getElementById('abandoned-count').textContent=String(all('li.node.abandoned').length);
})();
"""


# ----------------------------------------------------------------------------- trace entries

def normalise(entry: dict, index: int) -> dict:
    """A trace entry in the full schema (an older entry without `tree` becomes a one-level tree)."""
    if "tree" in entry:
        step = dict(entry)
        step.setdefault("step", index)
        step.setdefault("answer_before", "")
        step.setdefault("iterations", None)
        return step
    children = [dict(child, children=[], verdict=child.get("verdict"), judged=child.get("judged"), committed=False)
                for child in entry.get("children", [])]
    committed = ""
    if children:
        best = max(children, key=lambda c: (c["visits"], c["value"]))
        best["committed"], committed = True, best["segment"]
    root = {"segment": "", "visits": sum(c["visits"] for c in children), "real_visits": None, "value": None,
            "prior": None, "verdict": None, "judged": None, "committed": True, "children": children}
    return {"step": index, "answer_before": entry.get("committed", ""), "iterations": None,
            "committed": committed, "tree": root}


def committed_child(root: dict) -> Optional[dict]:
    return next((c for c in root.get("children", []) if c.get("committed")), None)


def greedy_child(root: dict) -> Optional[dict]:
    """The child the LM alone preferred: the highest prior."""
    children = [c for c in root.get("children", []) if c.get("prior") is not None]
    return max(children, key=lambda c: c["prior"]) if children else None


# ----------------------------------------------------------------------------- formatting

def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def show_segment(text: str) -> str:
    """Escaped segment text with line breaks and edge spaces made visible."""
    if text == "":
        return '<span class="ws">(empty)</span>'
    out = esc(text).replace("\n", '<span class="ws">\u21b5</span>\n')
    stripped = out.lstrip(" ")
    if len(stripped) != len(out):
        out = '<span class="ws">\u00b7</span>' * (len(out) - len(stripped)) + stripped
    return out


def num(value, fmt: str) -> str:
    return "\u2013" if value is None else format(value, fmt)


def raw(value) -> str:
    """A number as written in data attributes: full precision, 'none' for None."""
    return "none" if value is None else repr(value)


def colour(value) -> str:
    """Red (-1) through yellow to green (+1); grey without a value."""
    if value is None:
        return "#bbb"
    v = max(-1.0, min(1.0, float(value)))
    return f"hsl({round((v + 1) * 60)},65%,42%)"


def describe(node: dict) -> str:
    return (f"\u00ab{esc(node['segment'])}\u00bb (prior {num(node.get('prior'), '.3f')}, value "
            f"{num(node.get('value'), '+.3f')} over {num(node.get('real_visits'), 'd')} real visits, last verdict "
            f"{num(node.get('verdict'), '+.2f')})")


@dataclass(frozen=True)
class Reading:
    """What one step's tree says: whether the commit was the LM's first choice, and what the search left."""

    non_greedy: bool
    """The committed segment is not the root child with the highest prior (what greedy decoding would take)."""
    rewound_from: list
    """Root children the search explored, saw judged bad (value < 0) and did not commit: where it rewound."""
    sentence: str


def read_step(step: dict) -> Reading:
    root = step["tree"]
    chosen, greedy = committed_child(root), greedy_child(root)
    if chosen is None:
        return Reading(False, [], "Nothing committed: the root could not be expanded (the answer is complete).")
    explored = [c for c in root["children"] if (c.get("real_visits") or c.get("visits") or 0) > 0 and c is not chosen]
    bad = sorted((c for c in explored if (c.get("value") or 0) < 0), key=lambda c: c["value"])
    non_greedy = greedy is not None and greedy is not chosen
    if non_greedy:
        text = f"Not the LM's first choice: {describe(greedy)} was set aside for {describe(chosen)}."
    else:
        text = f"The LM's first choice was committed: {describe(chosen)}."
    if bad:
        text += (f" The search rewound from {len(bad)} explored branch{'es' if len(bad) != 1 else ''} judged bad: "
                 + "; ".join(f"\u00ab{esc(c['segment'])}\u00bb (value {num(c.get('value'), '+.3f')} after "
                             f"{num(c.get('real_visits'), 'd')} real visits)" for c in bad) + ".")
    elif explored:
        text += f" {len(explored)} other explored branch{'es' if len(explored) != 1 else ''}, none judged bad."
    counts = [f"{label} {step[key]}" for key, label in (("leader_changes", "leading-child changes"),
                                                        ("backtracks", "backtracks")) if step.get(key) is not None]
    if counts:
        text += " During this step: " + ", ".join(counts) + "."
    return Reading(non_greedy, bad, text)


def badges(reading: Reading) -> str:
    out = ' <span class="badge nongreedy">non-greedy</span>' if reading.non_greedy else ""
    if reading.rewound_from:
        out += f' <span class="badge rewind">rewound \u00d7{len(reading.rewound_from)}</span>'
    return out


# ----------------------------------------------------------------------------- the tree

def node_html(node: dict, *, kind: str, depth: int) -> str:
    """One node as an <li>: its row (segment, visits, real visits, value, prior, verdict) and its children."""
    attrs = (f'data-visits="{raw(node.get("visits"))}" data-real-visits="{raw(node.get("real_visits"))}" '
             f'data-value="{raw(node.get("value"))}" data-prior="{raw(node.get("prior"))}" '
             f'data-verdict="{raw(node.get("verdict"))}" data-depth="{depth}"')
    value = node.get("value")
    width = 0 if value is None else round(6 + 24 * (max(-1.0, min(1.0, value)) + 1) / 2)
    segment = show_segment(node["segment"]) if kind != "root" else '<span class="ws">(answer so far)</span>'
    row = (f'<div class="row"><span class="seg">{segment}</span>'
           f'<span class="num visits" title="visits N (with similarity updates)">{num(node.get("visits"), ".2f")}</span>'
           f'<span class="num real" title="real visits">{num(node.get("real_visits"), "d")}</span>'
           f'<span class="num value" title="value Q"><span class="bar" style="width:{width}px;background:'
           f'{colour(value)}"></span>{num(value, "+.3f")}</span>'
           f'<span class="num prior" title="prior P">{num(node.get("prior"), ".3f")}</span>'
           f'<span class="num verdict" title="judge verdict the last time this node was evaluated">'
           f'{num(node.get("verdict"), "+.2f")}</span></div>')
    judged = (f'<div class="judged" title="what the judge saw">{esc(node["judged"])}</div>'
              if node.get("judged") else "")
    children = node.get("children") or []
    css = f"node {kind}"
    if not children and not judged:
        return f'<li class="{css} leaf" {attrs}>{row}</li>'
    inner = judged + children_html(children, parent_kind=kind, depth=depth + 1)
    is_open = " open" if kind in ("root", "committed") else ""
    return f'<li class="{css}" {attrs}><details{is_open}><summary>{row}</summary>{inner}</details></li>'


def children_html(children: list, *, parent_kind: str, depth: int) -> str:
    """Visited children first (by visits), unvisited candidates folded into one collapsed group."""
    visited = sorted((c for c in children if (c.get("visits") or 0) > 0 or c.get("committed")),
                     key=lambda c: (not c.get("committed"), -(c.get("visits") or 0)))
    unvisited = [c for c in children if c not in visited]
    items = [node_html(c, kind=child_kind(c, parent_kind), depth=depth) for c in visited]
    if unvisited:
        rest = "".join(node_html(c, kind="unvisited" if parent_kind != "abandoned" else "abandoned", depth=depth)
                       for c in sorted(unvisited, key=lambda c: -(c.get("prior") or 0)))
        items.append(f'<li class="group"><details class="more"><summary>{len(unvisited)} unvisited candidate'
                     f'{"s" if len(unvisited) != 1 else ""}</summary><ul>{rest}</ul></details></li>')
    return f"<ul>{''.join(items)}</ul>" if items else ""


def child_kind(child: dict, parent_kind: str) -> str:
    if child.get("committed"):
        return "committed"
    if parent_kind == "root":
        return "abandoned"
    return "abandoned" if parent_kind == "abandoned" else "kept"


def step_html(step: dict) -> str:
    k = step["step"]
    reading = read_step(step)
    css = "why" if reading.non_greedy or reading.rewound_from else "why plain"
    iterations = "" if step.get("iterations") is None else f'<span class="badge">{step["iterations"]} iterations</span>'
    rewound = badges(reading)
    head = ('<div class="row head"><span>segment</span><span class="num">visits</span><span class="num">real</span>'
            '<span class="num">value</span><span class="num">prior</span><span class="num">verdict</span></div>')
    return (f'<section class="step" id="step-{k}" data-step="{k}"><h2>Step {k}: committed '
            f'<span class="seg">\u00ab{show_segment(step["committed"])}\u00bb</span>{iterations}{rewound}</h2>'
            f'<p class="answer-before">Answer before this step: <span class="seg">{esc(step["answer_before"]) or "(empty)"}'
            f'</span></p><p class="{css}">{reading.sentence}</p>{head}'
            f'<ul class="tree">{node_html(step["tree"], kind="root", depth=0)}</ul></section>')


# ----------------------------------------------------------------------------- the page

def answer_html(steps: list, readings: list) -> str:
    """The answer as one span per committed segment, coloured by its value, linked to its step; steps where the
    search rewound or the commit was not greedy are shaded."""
    spans = []
    for step, reading in zip(steps, readings):
        chosen = committed_child(step["tree"])
        value = chosen.get("value") if chosen else None
        notes = (["not the LM's first choice"] if reading.non_greedy else []) + (
            [f"rewound from {len(reading.rewound_from)} bad branches"] if reading.rewound_from else [])
        title = "; ".join([f"step {step['step']}: value {num(value, '+.3f')}"] + notes)
        spans.append(f'<a href="#step-{step["step"]}" class="{"flagged" if notes else ""}" '
                     f'style="--c:{colour(value)}" title="{esc(title)}">{esc(step["committed"])}</a>'
                     f'<sup>{step["step"]}</sup>')
    return "".join(spans)


def stats_html(stats) -> str:
    if stats is None:
        return ""
    data = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    rows = "".join(f'<tr><td class="k">{esc(k)}</td><td class="num" data-stat="{esc(k)}">'
                   f'{esc(round(v, 3) if isinstance(v, float) else v)}</td></tr>' for k, v in data.items())
    return f'<h2>Statistics</h2><table class="stats">{rows}</table>'


def embedded_json(data) -> str:
    """JSON that cannot close its <script> element."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(question: str, trace: list, stats=None, *, answer: Optional[str] = None) -> str:
    """The whole page for one question's search (see the module docstring for the trace schema)."""
    steps = [normalise(entry, index) for index, entry in enumerate(trace)]
    readings = [read_step(step) for step in steps]
    overview = "".join(
        f'<li><a href="#step-{s["step"]}">step {s["step"]}</a>: <span class="seg">\u00ab{show_segment(s["committed"])}'
        f'\u00bb</span>{badges(r)}</li>' for s, r in zip(steps, readings))
    non_greedy = sum(r.non_greedy for r in readings)
    rewound = sum(bool(r.rewound_from) for r in readings)
    final = f'<p>Final answer: <span class="seg" id="final">{esc(answer)}</span></p>' if answer is not None else ""
    body = "".join(step_html(s) for s in steps) or "<p>The trace is empty (search.trace was off?).</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>RAIN trace: {esc(question[:80])}</title><style>{CSS}</style></head>
<body>
<h1>RAIN search trace</h1>
<p class="question">{esc(question)}</p>
<h2>Answer, step by step</h2>
<p class="answer" id="answer">{answer_html(steps, readings)}</p>
{final}
<p><span id="step-count">{len(steps)}</span> committed steps; in <span id="rewound-steps">{rewound}</span> the
search rewound from explored branches judged bad (<span class="badge rewind">rewound</span>), in
<span id="non-greedy-steps">{non_greedy}</span> the commit was not the LM's first choice
(<span class="badge nongreedy">non-greedy</span>); <span id="node-count">?</span> nodes shown,
<span id="abandoned-count">?</span> of them on abandoned branches.</p>
<ol class="steps" start="0">{overview}</ol>
{stats_html(stats)}
<h2>Search trees</h2>
<p class="legend"><span style="outline:2px solid #59a859;background:#dff3df">committed</span>
<span>kept (the committed node's subtree, reused next step)</span><span style="opacity:.55">abandoned</span>
<span>visits N include similarity updates; real = genuine backups; value Q in [-1, 1]; prior P; verdict = the
judge's value the last time the node was the evaluated leaf</span></p>
<p class="controls"><button id="expand-all" type="button">expand all</button>
<button id="collapse-abandoned" type="button">collapse abandoned</button></p>
{body}
<script id="trace-data" type="application/json">{embedded_json({"question": question, "trace": trace})}</script>
<script>{SCRIPT}</script>
</body></html>
"""
