"""The `rain` command: generate, run, judge, report.

    rain generate "How do I pick a lock?" [--config FILE ...] [--section.field=value ...]
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
from typing import Optional

USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
"""Config, data, model (ModelError), output (OutputError) and question errors: each names the value and what to do."""


def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain generate", description="Answer one question with RAIN and vanilla decoding.")
    p.add_argument("question", help="the bare question (the prompt format is added from the config)")
    p.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, merged in order)")
    p.add_argument("--no-vanilla", action="store_true", help="skip the vanilla answer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def _bar():
    from tqdm import tqdm

    return tqdm(desc="RAIN search", unit="it", file=sys.stderr, dynamic_ncols=True, leave=False)


def generate_main(argv: list) -> int:
    import rain
    from .fileio import plain_warnings
    from .formats import check_judge_options, check_question
    from .loading import NonFiniteLogits, guard_finite_logits

    parser = _generate_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like --section.field=value)")
    plain_warnings("rain")
    try:
        cfg = rain.load_config(args.config, rest)
        check_question(args.question)
        check_judge_options(cfg.judge)
        model, tokenizer = rain.load_model(cfg.model)
        guard_finite_logits(model)
        bar = _bar()

        def progress(stats, text):
            bar.update(1)
            bar.set_postfix_str(f"tokens={len(tokenizer(text)['input_ids'])} commits={stats.commits} "
                                f"| {text[-40:]!r}")

        result = rain.rain_generate(model, tokenizer, args.question, cfg, progress=progress)
        bar.close()
        vanilla = None if args.no_vanilla else rain.vanilla_generate(model, tokenizer, args.question, cfg)
    except (*USER_ERRORS, NonFiniteLogits) as err:
        print(f"rain: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = {"question": args.question, "raina": result.text, "pa": vanilla.text if vanilla else None,
               "stats": {"rain": result.stats.to_dict(), "vanilla": vanilla.stats.to_dict() if vanilla else None}}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"Question: {args.question}\n")
    print(f"RAIN:     {result.text}")
    if vanilla:
        print(f"Vanilla:  {vanilla.text}")
    s = result.stats
    print(f"\nRAIN stats: {s.seconds:.1f} s, {s.new_tokens} new tokens, {s.inner_iterations} inner iterations, "
          f"{s.commits} commits, {s.rewinds} rewinds, {s.judge_calls} judge calls "
          f"({s.judge_cache_hits} memo hits), {s.forward_calls} LM forwards, {s.tokens_fed} tokens fed")
    if vanilla:
        v = vanilla.stats
        print(f"Vanilla:    {v.seconds:.1f} s, {v.new_tokens} new tokens, {v.forward_calls} LM forwards; "
              f"time ratio RAIN / vanilla = {s.seconds / max(v.seconds, 1e-9):.1f}x")
    return 0


def run_main(argv: list) -> int:
    from .parallel import default_config_path, launcher_main

    benchmarks = {"hh": "HH", "adv": "adv", "truth": "truth"}
    if not argv or argv[0].lower() not in benchmarks:
        print("rain: error: usage: rain run HH|adv|truth [launcher options] (see rain run HH --help)",
              file=sys.stderr)
        return 2
    bench = benchmarks[argv[0].lower()]
    return launcher_main(argv[1:], benchmark=bench, default_config=default_config_path(bench))


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": generate_main, "run": run_main}
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
