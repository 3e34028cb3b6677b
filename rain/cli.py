"""The `rain` command: generate, run, judge, report.

    rain generate "How do I pick a lock?" [--config FILE ...] [--section.field=value ...]
    rain generate --file QUESTIONS.txt [--batch_size=8] [--json]   (one question per line)
    rain run HH|adv|truth [launcher options]        (= cd HH && python allocation.py ...)
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

ROOT = Path(__file__).resolve().parents[1]
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain generate", description="Answer one question with RAIN and vanilla decoding.")
    p.add_argument("question", nargs="?", help="the bare question (the prompt format is added from the config)")
    p.add_argument("--file", help="answer every line of this text file instead, run.batch_size at a time")
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, merged in order)")
    p.add_argument("--no-vanilla", action="store_true", help="skip the vanilla answer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


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
    from .formats import check_question

    parser = _generate_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like --section.field=value)")
    try:
        cfg = rain.load_config(args.config, rest)
        questions = _questions(args, parser)
        for question in questions:
            check_question(question)
        model, tokenizer = rain.load_model(cfg.model)
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
            return 0
        jobs = ((i, q, cfg.search.seed + i, mode) for i, q in enumerate(questions))
        for i, out in generate_many(searcher, jobs, batch_size=cfg.run.batch_size):
            if isinstance(out, BaseException):
                raise out
            _print_answer(questions[i], out["rain"], out["vanilla"], args.json)
    except USER_ERRORS as err:
        print(f"rain: error: {err}", file=sys.stderr)
        return 2
    return 0


def run_main(argv: list) -> int:
    from .parallel import launcher_main

    benchmarks = {"hh": "HH", "adv": "adv", "truth": "truth"}
    if not argv or argv[0].lower() not in benchmarks:
        print("rain: error: usage: rain run HH|adv|truth [launcher options] (see rain run HH --help)",
              file=sys.stderr)
        return 2
    bench = benchmarks[argv[0].lower()]
    return launcher_main(argv[1:], benchmark=bench, default_config=ROOT / "configs" / f"{bench.lower()}.yaml")


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": generate_main, "run": run_main}
    if argv and argv[0] in ("judge", "report"):
        from .judge.cli import judge_main, report_main

        return (judge_main if argv[0] == "judge" else report_main)(argv[1:])
    if not argv or argv[0] not in commands:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
