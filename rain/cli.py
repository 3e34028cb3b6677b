"""The `rain` command: generate, run, judge, report, calibrate, trace, serve.

    rain generate "How do I pick a lock?" [--config FILE ...] [--section.field=value ...]
    rain generate --file QUESTIONS.txt [--batch_size=8] [--json]   (one question per line)
    rain run HH|adv|truth [launcher options]        (= cd HH && python allocation.py ...)
    rain calibrate HH|truth [--data FILE] [--limit N] [--config FILE ...]   (can this model judge itself?)
    rain trace "How do I pick a lock?" [--out trace.html] [--config FILE ...]   (the search as an HTML page)
    rain serve --config configs/models/embedded.yaml [--port 8000] [--api-key KEY]   (OpenAI-compatible API)
    rain judge RESULTS.json [options]                (see rain/judge/README.md)
    rain report SCORED.json ... [options]

Knows: argument parsing and printing. Every error a user can cause is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
"""Config, data, model (ModelError), output (OutputError) and question errors: each names the value and what to do."""


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain generate", description="Answer one question with RAIN and vanilla decoding.")
    p.add_argument("question", nargs="?", help="the bare question (the prompt format is added from the config)")
    p.add_argument("--file", help="answer every line of this text file instead, run.batch_size at a time")
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, merged in order)")
    p.add_argument("--no-vanilla", action="store_true", help="skip the vanilla answer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--trace", metavar="FILE", help="also write the search as an HTML page (see rain trace)")
    return p


def _trace_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain trace", description=(
        "Answer one question with RAIN and write the search as one self-contained HTML page: each committed "
        "step's tree with visits, values, priors and judge verdicts, the committed path and the abandoned branches."))
    p.add_argument("question", help="the bare question (the prompt format is added from the config)")
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, merged in order)")
    p.add_argument("--out", default="trace.html", help="the HTML file to write (default: trace.html)")
    return p


def write_trace(path: str, question: str, result) -> Path:
    """The trace page of one search result, written to `path`."""
    from .fileio import atomic_write_text, check_writable_dir
    from .trace_page import render

    out = Path(path)
    check_writable_dir(out.parent)
    atomic_write_text(out, render(question, result.trace, result.stats, answer=result.text),
                      what_to_do="pass another path")
    return out


def _overrides(parser: argparse.ArgumentParser, argv: list) -> tuple:
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like --section.field=value)")
    return args, rest


def trace_main(argv: list) -> int:
    import rain
    from .formats import check_judge_options, check_question
    from .loading import NonFiniteLogits, guard_finite_logits

    args, rest = _overrides(_trace_parser(), argv)
    try:
        cfg = rain.load_config(args.config, rest + ["search.trace=true"])
        check_question(args.question)
        check_judge_options(cfg.judge)
        model, tokenizer = rain.load_model(cfg.model)
        guard_finite_logits(model)
        bar = _bar()
        result = rain.rain_generate(model, tokenizer, args.question, cfg, progress=lambda stats, text: bar.update(1))
        bar.close()
        out = write_trace(args.out, args.question, result)
    except (*USER_ERRORS, NonFiniteLogits) as err:
        print(f"rain trace: error: {err}", file=sys.stderr)
        return 2
    print(f"RAIN: {result.text}")
    print(f"trace of {len(result.trace)} committed steps written to {out}")
    return 0


def _bar():
    from tqdm import tqdm

    return tqdm(desc="RAIN search", unit="it", file=sys.stderr, dynamic_ncols=True, leave=False)


def _questions(args, parser) -> list:
    if (args.question is None) == (args.file is None):
        parser.error("give one question, or --file with one question per line")
    if args.question is not None:
        return [args.question]
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not questions:
        raise ValueError(f"{path}: no questions (one per line)")
    return questions


def _print_answer(question: str, result, vanilla, as_json: bool) -> None:
    if as_json:
        out = {"question": question, "raina": result.text, "pa": vanilla.text if vanilla else None,
               "stats": {"rain": result.stats.to_dict(), "vanilla": vanilla.stats.to_dict() if vanilla else None}}
        print(json.dumps(out, ensure_ascii=False), flush=True)
        return
    print(f"Question: {question}\n")
    print(f"RAIN:     {result.text}")
    if vanilla:
        print(f"Vanilla:  {vanilla.text}")
    s = result.stats
    print(f"\nRAIN stats: {s.seconds:.1f} s, {s.new_tokens} new tokens, {s.inner_iterations} inner iterations, "
          f"{s.commits} commits, {s.non_greedy_commits} non-greedy commits, {s.backtracks} backtracks, {s.judge_calls} judge calls "
          f"({s.judge_cache_hits} memo hits), {s.forward_calls} LM forwards, {s.tokens_fed} tokens fed")
    if vanilla:
        v = vanilla.stats
        print(f"Vanilla:    {v.seconds:.1f} s, {v.new_tokens} new tokens, {v.forward_calls} LM forwards; "
              f"time ratio RAIN / vanilla = {s.seconds / max(v.seconds, 1e-9):.1f}x")
    print(flush=True)


def generate_main(argv: list) -> int:
    import rain
    from .decoding import generate_many
    from .fileio import plain_warnings
    from .formats import check_judge_options, check_question
    from .loading import NonFiniteLogits, guard_finite_logits

    parser = _generate_parser()
    args, rest = _overrides(parser, argv)
    plain_warnings("rain")
    failed = 0
    try:
        questions = _questions(args, parser)
        if args.trace and len(questions) > 1:
            raise ValueError("--trace draws one search: give one question, not --file")
        cfg = rain.load_config(args.config, rest + (["search.trace=true"] if args.trace else []))
        for question in questions:
            check_question(question)
        check_judge_options(cfg.judge)
        model, tokenizer = rain.load_model(cfg.model)
        guard_finite_logits(model)
        searcher = rain.Searcher(model, tokenizer, cfg)
        mode = "rain" if args.no_vanilla else "both"
        if len(questions) == 1:
            bar = _bar()

            def progress(stats, text):
                bar.update(1)
                bar.set_postfix_str(f"commits={stats.commits} | {text[-40:]!r}")

            result = searcher.generate(questions[0], progress=progress)
            bar.close()
            vanilla = None if args.no_vanilla else rain.vanilla_generate(model, tokenizer, questions[0],
                                                                           searcher=searcher)
            _print_answer(questions[0], result, vanilla, args.json)
            if args.trace:
                print(f"trace written to {write_trace(args.trace, questions[0], result)}", file=sys.stderr)
            return 0
        jobs = ((i, q, cfg.search.seed + i, mode) for i, q in enumerate(questions))
        for i, out in generate_many(searcher, jobs, batch_size=cfg.run.batch_size):
            if isinstance(out, BaseException):  # one question failed: say so, answer the others
                failed += 1
                print(f"rain: error: question {i + 1} ({questions[i][:60]!r}) failed: {type(out).__name__}: "
                      f"{' '.join(str(out).split())[:200]}", file=sys.stderr, flush=True)
                continue
            _print_answer(questions[i], out["rain"], out["vanilla"], args.json)
    except (*USER_ERRORS, NonFiniteLogits) as err:
        print(f"rain: error: {err}", file=sys.stderr)
        return 2
    return 1 if failed else 0


def run_main(argv: list) -> int:
    from .config import default_config_path
    from .parallel import launcher_main

    benchmarks = {"hh": "HH", "adv": "adv", "truth": "truth"}
    if not argv or argv[0].lower() not in benchmarks:
        print("rain: error: usage: rain run HH|adv|truth [launcher options] (see rain run HH --help)",
              file=sys.stderr)
        return 2
    bench = benchmarks[argv[0].lower()]
    return launcher_main(argv[1:], benchmark=bench, default_config=default_config_path(bench))


def _calibrate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain calibrate", description=(
        "Self-evaluation accuracy of a model under a config, on labelled data: run it before a RAIN run "
        "(see README, 'Can this model judge itself?')."))
    p.add_argument("benchmark", help="HH (the harm judge: HH-RLHF pairs and the project's labelled set) or truth "
                                     "(the truth judge: TruthfulQA correct vs incorrect answers)")
    p.add_argument("--data", help="HH: an hh-rlhf file with chosen/rejected pairs (harmless-base .jsonl.gz; "
                                  "without it only the labelled set is judged); truth: TruthfulQA.csv "
                                  "(without it the hub's truthful_qa)")
    p.add_argument("--config", action="append", default=[],
                   help="YAML applied after configs/hh.yaml or truth.yaml (repeatable), e.g. a configs/models/ file")
    p.add_argument("--limit", type=int, help="at most this many pairs (questions) per data set")
    p.add_argument("--out", help="JSON report (default: calibration-<benchmark>-<model>.json)")
    p.add_argument("--cache", help="verdict cache, JSONL (default: .calibrate_cache.jsonl beside --out)")
    p.add_argument("--no-cache", action="store_true", help="keep verdicts in memory only")
    return p


def calibrate_main(argv: list) -> int:
    import rain
    from tqdm import tqdm

    from .calibrate import CachedJudge, benchmark_sets, calibrate, format_table, judge_identity, make_judge
    from .config import default_config_path
    from .fileio import atomic_write_text, check_writable_dir
    from .judge.cache import VerdictCache
    from .judge.config import JudgeError

    args, rest = _overrides(_calibrate_parser(), argv)
    try:
        bench = {"hh": "HH", "truth": "truth"}.get(args.benchmark.lower())
        if bench is None:
            raise ValueError(f"benchmark must be HH or truth, got {args.benchmark!r}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        cfg = rain.load_config([default_config_path(bench)] + args.config, rest)
        sets = benchmark_sets(bench, args.data, args.limit)
        out = Path(args.out or f"calibration-{bench.lower()}-{Path(cfg.model.name).name}.json")
        check_writable_dir(out.parent)  # before any verdict is computed
        cache = VerdictCache(None if args.no_cache else Path(args.cache or out.parent / ".calibrate_cache.jsonl"))
        model, tokenizer = rain.load_model(cfg.model)
        evaluator = make_judge(model, tokenizer, cfg.judge)
        judge = CachedJudge(evaluator, model_name=cfg.model.name, cache=cache, template=judge_identity(evaluator))
        with tqdm(total=sum(len(cases) for _, cases, _, _ in sets), desc="judging", unit="answer",
                  file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            report = calibrate(cfg, judge, sets, progress=lambda: bar.update(1))
        report["cache"] = {"path": None if cache.path is None else str(cache.path), "hits": cache.hits}
        atomic_write_text(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                          what_to_do="pass --out with a writable folder that has free space (verdicts are cached)")
    except (*USER_ERRORS, JudgeError) as err:
        print(f"rain calibrate: error: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"report written to {out}")
    return 0


def serve_main(argv: list) -> int:
    from .serve import serve_main as main

    return main(argv)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": generate_main, "run": run_main, "calibrate": calibrate_main, "trace": trace_main,
                "serve": serve_main}
    if argv and argv[0] in ("judge", "report"):
        from .judge.cli import judge_main, report_main

        return (judge_main if argv[0] == "judge" else report_main)(argv[1:])
    if not argv or argv[0] not in commands:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return commands[argv[0]](argv[1:])
    except KeyboardInterrupt:
        print("\nrain: interrupted", file=sys.stderr)  # on a line of its own, after any progress bar
        return 130


if __name__ == "__main__":
    sys.exit(main())
