"""Speed of the cached engine against the plain-recompute reference and vanilla decoding.

    python bench/bench_engine.py                 # full run (official constants, embedded model)
    python bench/bench_engine.py --quick         # a smoke run of a few minutes
    python bench/bench_engine.py --jobs 1        # measurements one after another (default: 2 streams, 1 core each)

Each measurement runs in its own subprocess (so peak memory is its own), on the embedded
SmolLM2-135M-Instruct with the official search constants:
- cached, full: the fast engine to 64 new tokens on 5 HH-style questions (the full budget);
- cached, fixed budget and reference, fixed budget: the first 30 inner iterations of 2 questions
  with each engine (the reference is slow by design: compare per inner iteration);
- vanilla: KV-cached greedy decoding to 64 new tokens on the same 5 questions.
It prints a markdown table (wall s, LM forwards and tokens fed, per inner iteration and per
answer token, peak RSS) and the ratios; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "How do I pick a lock?",
    "What is the best way to learn to cook?",
    "How can I get back at a coworker who embarrassed me?",
    "Can you recommend a good book about space?",
    "What household items can be used as weapons?",
]


def measure(kind: str, *, questions: int, new_tokens: int, iterations: int | None) -> dict:
    import torch

    import rain
    from rain.decoding import vanilla_searcher

    torch.manual_seed(0)
    model, tok = rain.load_model("embedded")
    overrides = [f"max_new_tokens={new_tokens}", f"engine={'reference' if kind == 'reference' else 'cached'}"]
    if iterations:
        overrides.append(f"max_total_iterations={iterations}")
    cfg = rain.load_config(None, overrides)
    totals = {"seconds": 0.0, "new_tokens": 0, "inner_iterations": 0, "forward_calls": 0, "tokens_fed": 0,
              "judge_forward_calls": 0, "judge_tokens_fed": 0, "judge_calls": 0}
    answers, cpu0 = [], time.process_time()
    # one per process (the fixed prompt heads are prefilled once); vanilla's loads no judge prompt or embedder
    searcher = vanilla_searcher(model, tok, cfg) if kind == "vanilla" else rain.Searcher(model, tok, cfg)
    for q in QUESTIONS[:questions]:
        if kind == "vanilla":
            result = rain.vanilla_generate(model, tok, q, cfg, searcher=searcher)
        else:
            result = searcher.generate(q, seed=0)
        stats = result.stats.to_dict()
        for key in totals:
            totals[key] += stats[key]
        answers.append(result.text)
    totals["cpu_seconds"] = time.process_time() - cpu0
    totals["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind != "vanilla":
        totals["judge_prefix_prefills"] = len(searcher.engine.heads) if kind == "cached" else "n/a (no cache)"
    totals["answers"] = answers
    return totals


def start_child(kind: str, *, threads: int, **kw) -> subprocess.Popen:
    args = [sys.executable, __file__, "--child", kind, "--questions", str(kw["questions"]),
            "--new-tokens", str(kw["new_tokens"])] + (["--iterations", str(kw["iterations"])] if kw["iterations"] else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_stream(jobs: list, *, threads: int) -> list:
    """Run (name, kind, kwargs) jobs one after another in child processes; -> their result dicts."""
    out = []
    for name, kind, kw in jobs:
        t0 = time.perf_counter()
        proc = start_child(kind, threads=threads, **kw)
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
        print(f"  {name}: done in {time.perf_counter() - t0:.0f} s: {json.dumps(out[-1])}", file=sys.stderr)
    return out


def row(name: str, r: dict) -> str:
    it, tok = max(r["inner_iterations"], 1), max(r["new_tokens"], 1)
    per_it = (f"{r['seconds'] / it:.2f} | {r['forward_calls'] / it:.1f} | {r['tokens_fed'] / it:.0f}"
              if r["inner_iterations"] else "- | - | -")
    return (f"| {name} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['new_tokens']} | {r['inner_iterations']} | {per_it} | "
            f"{r['seconds'] / tok:.2f} | {r['forward_calls'] / tok:.1f} | {r['tokens_fed'] / tok:.0f} | "
            f"{r['peak_rss_mb']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets: a smoke run")
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                   help="2: two streams in parallel, each single-threaded on its own core (default); 1: one after another")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--questions", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--new-tokens", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, questions=args.questions, new_tokens=args.new_tokens,
                                 iterations=args.iterations)))
        return
    n_full, tokens, n_fixed, fixed = (1, 4, 1, 4) if args.quick else (5, 64, 2, 30)
    fixed_kw = dict(questions=n_fixed, new_tokens=2048, iterations=fixed)
    full_kw = dict(questions=n_full, new_tokens=tokens, iterations=None)
    streams = [[("reference", "reference", fixed_kw), ("cached, fixed budget", "cached", fixed_kw)],
               [("vanilla", "vanilla", full_kw), ("cached, full budget", "cached", full_kw)]]
    if args.jobs == 1:
        streams = [streams[0] + streams[1]]
    threads = max(1, (os.cpu_count() or 1) // len(streams))
    print(f"running {sum(map(len, streams))} measurements in {len(streams)} parallel stream(s), "
          f"{threads} thread(s) each ...", file=sys.stderr)
    with ThreadPoolExecutor(len(streams)) as pool:
        results = [r for rs in pool.map(lambda jobs: run_stream(jobs, threads=threads), streams) for r in rs]
    order = [name for stream in streams for name, _, _ in stream]
    by_name = dict(zip(order, results))
    ref, fast, van, full = (by_name[n] for n in ("reference", "cached, fixed budget", "vanilla", "cached, full budget"))
    import torch
    import transformers

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({threads} thread(s) per measurement, {len(streams)} in parallel), transformers {transformers.__version__}; "
        f"model: embedded SmolLM2-135M-Instruct fp32; official constants (configs/base.yaml).",
        "",
        "| run | wall s | CPU s | new tokens | inner it. | s / it. | forwards / it. | tokens fed / it. | "
        "s / token | forwards / token | tokens fed / token | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        row(f"cached, {n_full} q. to {tokens} tokens", full),
        row(f"cached, {n_fixed} q. x first {fixed} it.", fast),
        row(f"reference, {n_fixed} q. x first {fixed} it.", ref),
        row(f"vanilla (cached greedy), {n_full} q. to {tokens} tokens", van),
        "",
        f"- wall time per inner iteration, reference / cached: "
        f"{(ref['seconds'] / ref['inner_iterations']) / (fast['seconds'] / fast['inner_iterations']):.1f}x",
        f"- CPU time per inner iteration, reference / cached: "
        f"{(ref['cpu_seconds'] / ref['inner_iterations']) / (fast['cpu_seconds'] / fast['inner_iterations']):.1f}x",
        f"- tokens fed per inner iteration, reference / cached: "
        f"{(ref['tokens_fed'] / ref['inner_iterations']) / (fast['tokens_fed'] / fast['inner_iterations']):.1f}x",
        f"- fixed prompt heads (few-shot prompt, judge instruction) prefilled in a process, once each: "
        f"{full['judge_prefix_prefills']} "
        f"(over {n_full} questions, {full['judge_calls']} judge calls)",
        f"- full answers: {full['seconds'] / n_full:.0f} s per question on average "
        f"({full['new_tokens'] / n_full:.0f} tokens, {full['inner_iterations'] / n_full:.0f} inner iterations)",
        f"- time ratio RAIN / vanilla (cached greedy baseline): {full['seconds'] / van['seconds']:.0f}x "
        f"(per answer token: {(full['seconds'] / max(full['new_tokens'], 1)) / (van['seconds'] / max(van['new_tokens'], 1)):.0f}x); "
        f"paper: 3.78-4.36x against an uncached vanilla on 30B-70B models",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
