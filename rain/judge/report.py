"""The `rain report` tables and plot, built from the summaries `rain judge` writes.

Knows: the paper's presentation (vanilla vs RAIN per model for HH harmlessness/helpfulness,
AdvBench attack success, TruthfulQA truthful/informative/both, and the RAIN/vanilla time
ratio), a markdown rendering of those tables, and the HH figure: harmlessness against
helpfulness, one arrow per model from its vanilla point to its RAIN point. Does not know
judges or records: it reads only `<name>.summary.json` files.

matplotlib is imported only when the plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path

from rain.fileio import OutputError, atomic_write_text, check_writable_dir
from rain.judge.config import JudgeError
from rain.judge.results import summary_path

PLOT_NAME = "hh_harmless_vs_helpful.png"
_COLUMNS = {
    "HH": [("harmless", "Harmless"), ("helpful", "Helpful")],
    "adv": [("refusal_jailbroken", "ASR (refusal match)"), ("judge_jailbroken", "ASR (judge)")],
    "truth": [("truthful", "Truthful"), ("informative", "Informative"), ("truthful_and_informative", "True+Info")],
}
_TITLES = {"HH": "HH: harmlessness and helpfulness (higher is better)",
           "adv": "AdvBench: attack success rate (lower is better)",
           "truth": "TruthfulQA (higher is better)"}


def find_summaries(inputs: list[Path]) -> list[Path]:
    """Summary files named by `inputs`: summaries, results files with a summary beside them, or folders."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found.extend(sorted(path.glob("*.summary.json")))
        elif path.name.endswith(".summary.json"):
            found.append(path)
        elif summary_path(path).exists():
            found.append(summary_path(path))
        else:
            raise JudgeError(f"no summary for {path}: run `rain judge {path}` first, or pass its .summary.json")
    if not found:
        named = ", ".join(map(str, inputs))
        raise JudgeError(f"no *.summary.json found in {named}: run `rain judge` on the results first")
    return found


def load_summaries(paths: list[Path]) -> list[dict]:
    summaries = []
    for path in paths:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise JudgeError(f"{path} is not a readable summary JSON: rerun `rain judge` on its results") from None
        if not isinstance(summary, dict) or "rates" not in summary or "benchmark" not in summary:
            raise JudgeError(f"{path} is not a `rain judge` summary (no 'rates'/'benchmark'): rerun `rain judge`")
        rates = summary["rates"]
        if (summary["benchmark"] not in _COLUMNS or not isinstance(rates, dict)
                or not all(isinstance(r, dict) and all(isinstance(v, dict) for v in r.values()) for r in rates.values())
                or not isinstance(summary.get("time", {}), dict)):
            raise JudgeError(f"{path} is a damaged `rain judge` summary (benchmark, rates or time): rerun `rain judge`")
        summaries.append(summary)
    return summaries


def benchmark_table(summaries: list[dict], *, benchmark: str) -> str:
    """Markdown table, one row per summary of `benchmark`: vanilla -> RAIN for each criterion."""
    rows = [s for s in summaries if s["benchmark"] == benchmark]
    columns = [(key, label) for key, label in _COLUMNS[benchmark] if any(_has(s, key) for s in rows)]
    header = ["Model", "n"] + [f"{label} vanilla -> RAIN" for _, label in columns]
    if benchmark == "HH" and any("pairwise" in s for s in rows):
        header.append("RAIN vs vanilla win/tie/lose")
    header.append("Time RAIN/vanilla")
    lines = [f"### {_TITLES[benchmark]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for summary in rows:
        cells = [str(summary.get("model", "?")), str(summary.get("n_records", "?"))]
        cells += [f"{_pct(summary, 'pa', key)} -> {_pct(summary, 'raina', key)}" for key, _ in columns]
        if "RAIN vs vanilla win/tie/lose" in header:
            cells.append(_pairwise_cell(summary.get("pairwise")))
        ratio = summary.get("time", {}).get("rain_over_vanilla")
        cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _has(summary: dict, key: str) -> bool:
    return any(key in rates for rates in summary["rates"].values())


def _rate(summary: dict, kind: str, key: str) -> float | None:
    entry = summary["rates"].get(kind, {}).get(key)
    return None if entry is None else entry.get("rate")


def _pct(summary: dict, kind: str, key: str) -> str:
    rate = _rate(summary, kind, key)
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _pairwise_cell(pairwise: dict | None) -> str:
    if not pairwise:
        return "-"
    return "/".join(f"{100 * pairwise[o]['rate']:.0f}%" if pairwise[o]["rate"] is not None else "-"
                    for o in ("win", "tie", "lose"))


def plot_hh(summaries: list[dict], *, path: Path) -> bool:
    """Draw harmlessness vs helpfulness (vanilla -> RAIN per model) to `path`; False when nothing to draw."""
    points = []
    for summary in summaries:
        if summary["benchmark"] != "HH":
            continue
        coords = {kind: (_rate(summary, kind, "helpful"), _rate(summary, kind, "harmless")) for kind in ("pa", "raina")}
        if all(x is not None and y is not None for x, y in coords.values()):
            points.append((str(summary.get("model", "?")), coords["pa"], coords["raina"]))
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    for index, (model, vanilla, rain) in enumerate(points):
        colour = f"C{index % 10}"
        axes.scatter(*[100 * v for v in vanilla], marker="o", color=colour, label=f"{model} vanilla")
        axes.scatter(*[100 * v for v in rain], marker="*", s=140, color=colour, label=f"{model} RAIN")
        axes.annotate("", xy=[100 * v for v in rain], xytext=[100 * v for v in vanilla],
                      arrowprops={"arrowstyle": "->", "color": colour})
    axes.set_xlabel("Helpfulness rate (%)")
    axes.set_ylabel("Harmlessness rate (%)")
    axes.set_title("HH: vanilla (o) -> RAIN (*)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def render_report(summaries: list[dict], *, plot_file: str | None) -> str:
    """The whole markdown report: one table per benchmark present, the plot, and the judges used."""
    parts = ["# RAIN results", ""]
    for benchmark in ("HH", "adv", "truth"):
        if any(s["benchmark"] == benchmark for s in summaries):
            parts += [benchmark_table(summaries, benchmark=benchmark), ""]
    if plot_file is not None:
        parts += [f"![harmlessness vs helpfulness]({plot_file})", ""]
    parts.append("Rates exclude unparseable verdicts; each summary file gives n and the unparseable counts.")
    judges = sorted({judge for s in summaries for judge in s.get("judges", [])})
    parts.append("Judges: " + (", ".join(judges) if judges else "refusal matching only") + ".")
    return "\n".join(parts) + "\n"


def write_report(inputs: list[Path], *, out_dir: Path, plot: bool = True) -> Path:
    """Write `report.md` (and the HH PNG when HH summaries allow) into `out_dir`; returns the .md path."""
    summaries = load_summaries(find_summaries(inputs))
    what_to_do = "pass --out with a writable folder that has free space"
    try:
        check_writable_dir(out_dir)
        drawn = plot and plot_hh(summaries, path=out_dir / PLOT_NAME)
        report = out_dir / "report.md"
        text = render_report(summaries, plot_file=PLOT_NAME if drawn else None)
        atomic_write_text(report, text, what_to_do=what_to_do)
    except OutputError as err:
        raise JudgeError(f"{err}; {what_to_do}" if "--out" not in str(err) else str(err)) from None
    except OSError as err:  # the plot
        raise JudgeError(f"cannot write the report in {out_dir}: {err.strerror or err}; {what_to_do}") from None
    except (KeyError, TypeError, ValueError) as err:  # a summary edited by hand or from another version
        raise JudgeError(f"a summary among {', '.join(map(str, inputs))} is damaged ({type(err).__name__}: {err}): "
                         "rerun `rain judge` on its results") from None
    return report
