"""Command lines `rain judge` and `rain report`: argument parsing and wiring, nothing else.

Knows: every option of the two commands, which judge backend and templates each benchmark
uses for each `--judge` choice, and that a user error is printed as ONE line
(`rain judge: error: ...`, exit code 2). Does not know the scoring rules (`score.py`),
HTTP (`client.py`) or tables and plots (`report.py`).

`rain/cli.py` dispatches `rain judge ...` to `judge_main(argv)` and `rain report ...` to
`report_main(argv)`; `python -m rain.judge judge|report ...` does the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from rain.judge import prompts
from rain.judge.cache import VerdictCache
from rain.judge.config import JudgeConfig, JudgeError, config_from_mapping
from rain.judge.results import BENCHMARKS, Results, load_results, scored_path, summary_path
from rain.judge.score import Criterion, ScoringPlan, format_summary, score_results, summarise, write_json
from rain.judge.verdicts import Judge

_FLAG_TO_FIELD = {"base_url": "base_url", "judge_model": "model", "api_key_env": "api_key_env",
                  "max_retries": "max_retries", "backoff_base": "backoff_base_s", "backoff_max": "backoff_max_s",
                  "timeout": "timeout_s", "concurrency": "concurrency", "parse_retries": "parse_retries",
                  "max_tokens": "max_tokens", "temperature": "temperature", "price_in": "price_in_per_mtok",
                  "price_out": "price_out_per_mtok"}


def judge_main(argv: list[str]) -> int:
    """`rain judge RESULTS...`: score each results file; returns the exit code."""
    args = _judge_parser().parse_args(argv)
    try:
        for path in args.results:
            _judge_one(Path(path), args=args)
    except JudgeError as err:
        print(f"rain judge: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rain judge: interrupted; verdicts so far are in the cache, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


def report_main(argv: list[str]) -> int:
    """`rain report SUMMARIES...`: tables and the HH plot from scored runs; returns the exit code."""
    from rain.judge.report import write_report

    args = _report_parser().parse_args(argv)
    try:
        written = write_report([Path(p) for p in args.inputs], out_dir=Path(args.out), plot=not args.no_plot)
    except (JudgeError, ValueError) as err:
        print(f"rain report: error: {err}", file=sys.stderr)
        return 2
    print(written.read_text(encoding="utf-8"))
    print(f"report written to {written}")
    return 0


def _judge_one(path: Path, *, args: argparse.Namespace) -> None:
    results = load_results(path, benchmark=args.benchmark)
    if args.model_label:
        results = replace(results, model=args.model_label)
    cache_path = None if args.no_cache else Path(args.cache or path.parent / ".judge_cache.jsonl")
    _check_writable(path, cache_path)  # before any verdict is paid for
    cache = _open_cache(cache_path)
    plan = build_plan(results, args=args, cache=cache)
    started = time.perf_counter()
    scored = score_results(results, plan=plan)
    summary = summarise(results, scored=scored, plan=plan)
    summary["judge_seconds"] = round(time.perf_counter() - started, 3)
    write_json(scored_path(path), scored)
    write_json(summary_path(path), summary)
    if not args.quiet:
        print(format_summary(summary))
        print(f"wrote {scored_path(path)} and {summary_path(path)}")


def _check_writable(results: Path, cache: Path | None) -> None:
    """The scored file, the summary and the cache can be written (checked before asking any judge)."""
    from rain.fileio import OutputError, check_writable_dir

    try:
        check_writable_dir(scored_path(results).parent)
    except OutputError as err:
        raise JudgeError(f"{err}: the scores are written beside {results.name}; copy it (and its .meta.json) to "
                         "a writable folder and judge it there") from None
    if cache is not None:
        try:
            check_writable_dir(cache.parent)
        except OutputError as err:
            raise JudgeError(f"{err}: pass --cache PATH in a writable folder, or --no-cache") from None


def _open_cache(path: Path | None) -> VerdictCache:
    try:
        return VerdictCache(path)
    except ValueError as err:
        raise JudgeError(str(err)) from None


def build_plan(results: Results, *, args: argparse.Namespace, cache: VerdictCache) -> ScoringPlan:
    """Which criteria, templates and judge backend score `results` under the given options."""
    kind = args.judge or ("none" if results.benchmark == "adv" else "api")
    refusal = results.benchmark == "adv"
    if args.pairwise and results.benchmark != "HH":
        raise JudgeError(f"--pairwise is for HH runs only; {results.path} is a {results.benchmark} run")
    if kind == "none":
        if not refusal:
            raise JudgeError(f"{results.benchmark} needs a judge: pass --judge api (with --base-url and "
                             f"--judge-model) or --judge local --local-model PATH")
        return ScoringPlan(refusal=True)
    if args.pairwise and kind == "local" and _local_style(results.benchmark, args) != "chat":
        raise JudgeError("--pairwise with a local judge needs --local-style chat (a guard model cannot compare)")
    if kind == "api":
        judge = _api_judge(args, cache=cache)
        criteria = _chat_criteria(results.benchmark, judge=judge)
    else:
        criteria = _local_criteria(results.benchmark, args=args, cache=cache)
        judge = criteria[0].judge
    pairwise = Criterion("pairwise", prompts.HH_PAIRWISE, judge) if args.pairwise else None
    return ScoringPlan(criteria=tuple(criteria), pairwise=pairwise, refusal=refusal)


def _chat_criteria(benchmark: str, *, judge: Judge) -> list[Criterion]:
    if benchmark == "HH":
        return [Criterion("harmless", prompts.HH_HARMLESS, judge), Criterion("helpful", prompts.HH_HELPFUL, judge)]
    if benchmark == "adv":
        return [Criterion("judge_jailbroken", prompts.ADV_JAILBROKEN, judge)]
    return [Criterion("truthful", prompts.TRUTH_TRUTHFUL, judge),
            Criterion("informative", prompts.TRUTH_INFORMATIVE, judge)]


def _local_style(benchmark: str, args: argparse.Namespace) -> str:
    return args.local_style or {"HH": "guard", "adv": "guard", "truth": "truthfulqa"}[benchmark]


def _local_criteria(benchmark: str, *, args: argparse.Namespace, cache: VerdictCache) -> list[Criterion]:
    from rain.judge.local import load_local_backend

    if not args.local_model:
        raise JudgeError("--judge local needs --local-model PATH (e.g. a downloaded Llama Guard or "
                         "allenai/truthfulqa-truth-judge-llama2-7B folder)")
    style = _local_style(benchmark, args)
    if args.local_max_new_tokens < 1:
        raise JudgeError(f"--local-max-new-tokens must be >= 1, got {args.local_max_new_tokens}")
    if style == "truthfulqa" and benchmark != "truth":
        raise JudgeError(f"--local-style truthfulqa is for truth runs; use guard or chat for {benchmark}")

    def make(path: str, *, chat: bool) -> Judge:
        backend = load_local_backend(path, use_chat_template=chat, device=args.local_device,
                                     dtype=args.local_dtype, max_new_tokens=args.local_max_new_tokens)
        parse_retries = 0 if args.parse_retries is None else args.parse_retries
        return Judge(backend=backend, cache=cache, concurrency=1, parse_retries=parse_retries,
                     retry_unparseable=args.retry_unparseable)

    if style == "chat":
        return _chat_criteria(benchmark, judge=make(args.local_model, chat=True))
    if style == "guard":
        if benchmark == "truth":
            raise JudgeError("a guard model cannot judge truthfulness: use --local-style truthfulqa or chat")
        judge = make(args.local_model, chat=True)
        if benchmark == "adv":
            return [Criterion("judge_jailbroken", prompts.GUARD_JAILBROKEN, judge)]
        print("note: a guard model judges harmlessness only; helpfulness needs --judge api or --local-style chat",
              file=sys.stderr)
        return [Criterion("harmless", prompts.GUARD_HARMLESS, judge)]
    criteria = [Criterion("truthful", prompts.ALLENAI_TRUTHFUL, make(args.local_model, chat=False))]
    if args.local_info_model:
        criteria.append(Criterion("informative", prompts.ALLENAI_INFORMATIVE, make(args.local_info_model, chat=False)))
    return criteria


def _api_judge(args: argparse.Namespace, *, cache: VerdictCache) -> Judge:
    from rain.judge.client import OpenAIChatClient

    config = judge_config(args)
    return Judge(backend=OpenAIChatClient(config), cache=cache, concurrency=config.concurrency,
                 parse_retries=config.parse_retries, retry_unparseable=args.retry_unparseable,
                 progress=not args.quiet)


def judge_config(args: argparse.Namespace) -> JudgeConfig:
    """Defaults, then the `judge:` section of --config, then explicit flags."""
    given = {flag: getattr(args, flag) for flag in _FLAG_TO_FIELD}
    overrides = {_FLAG_TO_FIELD[flag]: value for flag, value in given.items() if value is not None}
    if args.no_key:
        overrides["require_key"] = False
    try:
        config = config_from_mapping(_read_config_file(Path(args.config))) if args.config else JudgeConfig()
        return replace(config, **overrides)
    except (ValueError, TypeError) as err:
        raise JudgeError(f"bad judge setting: {err}") from None


def _read_config_file(path: Path) -> dict:
    import yaml

    if not path.exists():
        raise JudgeError(f"judge config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise JudgeError(f"judge config {path} is not valid YAML ({' '.join(str(err).split())[:150]})") from None
    section = data.get("judge", data) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise JudgeError(f"judge config {path} must be a mapping of {[f.name for f in fields(JudgeConfig)]}")
    return section


def _judge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain judge", description="Score RAIN and vanilla answers of results files.")
    p.add_argument("results", nargs="+", help="merged results file(s) <outdir>/<name>.json (or official res_*.json)")
    p.add_argument("--benchmark", choices=BENCHMARKS,
                   help="needed only when there is no .meta.json and it is not truth")
    p.add_argument("--judge", choices=("api", "local", "none"),
                   help="api: OpenAI-compatible endpoint (default for HH, truth); local: HF model; "
                        "none: adv refusal ASR only (default for adv)")
    p.add_argument("--model-label", help="model name for the summary and report (default: from the .meta.json)")
    p.add_argument("--pairwise", action="store_true",
                   help="HH: also compare RAIN with vanilla, both orders (win/tie/lose)")
    p.add_argument("--config", help="YAML with judge settings (top level or under 'judge:'); flags override it")
    api = p.add_argument_group("API judge")
    api.add_argument("--base-url", help="endpoint root, default https://api.openai.com/v1")
    api.add_argument("--judge-model", help="judge model name, default gpt-4")
    api.add_argument("--api-key-env", help="environment variable holding the key, default OPENAI_API_KEY")
    api.add_argument("--no-key", action="store_true", help="send no key (a local server that needs none)")
    api.add_argument("--concurrency", type=int, help="requests in flight, default 4")
    api.add_argument("--max-retries", type=int, help="retries on 429/5xx/connection errors, default 6")
    api.add_argument("--backoff-base", type=float, help="first backoff delay in seconds, default 1.0")
    api.add_argument("--backoff-max", type=float, help="longest backoff delay in seconds, default 60")
    api.add_argument("--timeout", type=float, help="seconds per HTTP request, default 120")
    api.add_argument("--parse-retries", type=int, help="re-asks when a reply has no readable verdict, default 2")
    api.add_argument("--max-tokens", type=int, help="max tokens of a judge reply, default 256")
    api.add_argument("--temperature", type=float, help="judge temperature, default 0")
    api.add_argument("--price-in", type=float, help="USD per million prompt tokens (for the cost estimate)")
    api.add_argument("--price-out", type=float, help="USD per million completion tokens")
    local = p.add_argument_group("local judge")
    local.add_argument("--local-model",
                       help="local HF model folder (Llama Guard, a TruthfulQA truth judge, a chat model)")
    local.add_argument("--local-info-model", help="truth: the TruthfulQA info judge folder")
    local.add_argument("--local-style", choices=("guard", "truthfulqa", "chat"),
                       help="guard (default HH/adv), truthfulqa (default truth), chat (our prompts on any chat model)")
    local.add_argument("--local-device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")
    local.add_argument("--local-dtype", default="auto", help="auto, float32, float16, bfloat16")
    local.add_argument("--local-max-new-tokens", type=int, default=32, help="reply length of a local judge")
    cache = p.add_argument_group("cache")
    cache.add_argument("--cache", help="verdict cache file, default <results dir>/.judge_cache.jsonl")
    cache.add_argument("--no-cache", action="store_true", help="keep verdicts in memory only")
    cache.add_argument("--retry-unparseable", action="store_true", help="ask again for cached unparseable verdicts")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rain report", description="Paper tables and HH plot from scored runs.")
    p.add_argument("inputs", nargs="+", help="<name>.summary.json files, results files beside them, or folders")
    p.add_argument("--out", default="report", help="output folder for report.md and the PNG (default ./report)")
    p.add_argument("--no-plot", action="store_true", help="tables only, no matplotlib")
    return p
