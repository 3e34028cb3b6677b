"""Many searches at once: throughput, sequential forwards and memory of the batched engine (issue 7).

    python bench/bench_batch.py tiny   [--baseline DIR]   # inner iterations/s on the tiny model: B = 1, 8 (and DIR's engine)
    python bench/bench_batch.py cpu    [--cap 16]         # embedded model, 8 HH prompts: prompts/hour at B = 1, 4, 8
    python bench/bench_batch.py memory [--baseline DIR]   # one expansion step: KV bytes and peak memory vs context
    python bench/bench_batch.py all    [--baseline DIR] [--out FILE]
    ... tiny|cpu --leaves K                               # one more row: the largest B with search.leaves_per_step=K
    ... tiny|cpu --repeat N                               # every row N times, taking turns; the median run is reported
    ... tiny|cpu --prompts N                              # N prompts (the 8 in turn, seed i): the steady state at B < N

`--baseline DIR` is a checkout of an earlier revision of this project (e.g. `git worktree add /tmp/baseline
62d99cd`, the one-prompt-at-a-time engine before batching): its engine is measured on the same workload in
the same run, so the ratios printed are measured side by side. Every measurement runs in its own child
process, one after another (peak memory is the child's own; 2 torch threads unless --threads).

Workloads: the official constants (configs/hh.yaml), the 8 prompts of rain/data/demo_prompts.jsonl, and a fixed
cap of inner iterations per prompt (`search.max_total_iterations`, default 16) so that every B runs the
same number of iterations. Figures:
- prompts/hour, seconds per inner iteration (all searches counted);
- sequential forward passes per prompt (physical forwards / prompts) and mean rows per forward: the
  hardware-independent measure of how well a batch would fill a GPU;
- the iteration's floor: the time of its forward passes at that batch size (measured around every
  engine step), beside the whole iteration; the rest is non-LM work (search, sampling, embedder);
- peak RSS of the child.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "rain" / "data" / "demo_prompts.jsonl"


def demo_questions() -> list:
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["chosen"].split("Human:", 1)[1].split("\n\nAssistant:", 1)[0].strip() for row in rows]


# ------------------------------------------------------------------------------------------ child side

CHILD = r'''
import json, resource, sys, time
import torch
import rain
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
model, tok = rain.load_model(spec["model"])
cfg = rain.load_config(spec["config"], spec["overrides"])
questions = spec["questions"]
out = {"prompts": len(questions)}
if hasattr(rain, "Searcher"):
    from rain.decoding import generate_many
    searcher = rain.Searcher(model, tok, cfg)
    engine, step_time = searcher.engine, [0.0]
    plain_step = engine.step
    def timed_step():
        t = time.perf_counter(); plain_step(); step_time[0] += time.perf_counter() - t
    engine.step = timed_step
    embed_time, plain_embed = [0.0], searcher.embedder.embed
    def timed_embed(texts):
        t = time.perf_counter(); r = plain_embed(texts); embed_time[0] += time.perf_counter() - t; return r
    searcher.embedder.embed = timed_embed
    t0 = time.perf_counter()
    jobs = [(i, q, i, "rain") for i, q in enumerate(questions)]
    results = [r["rain"] for _, r in sorted(generate_many(searcher, jobs, batch_size=spec["batch_size"]),
                                            key=lambda kr: kr[0])]  # in prompt order, whatever finished first
    out["seconds"] = time.perf_counter() - t0
    out.update(forwards=engine.batches.forwards, rows=engine.batches.rows, lm_seconds=step_time[0],
               embed_seconds=embed_time[0])
else:  # an earlier revision: one prompt at a time
    t0 = time.perf_counter()
    results = [rain.rain_generate(model, tok, q, cfg, seed=i) for i, q in enumerate(questions)]
    out["seconds"] = time.perf_counter() - t0
out["iterations"] = sum(r.stats.inner_iterations for r in results)
out["search_forwards"] = sum(r.stats.forward_calls for r in results)
out["answers"] = [r.token_ids for r in results]
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
'''


def child(code: str, spec: dict, *, pythonpath: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=str(spec.get("threads", 2)))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=pythonpath, env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------ workloads

def tiny_model_dir() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny

    folder = Path(tempfile.mkdtemp(prefix="rain-bench-tiny-"))
    return tiny.build_tiny(folder)


def throughput(name: str, model: str, batch_sizes: list, args) -> list:
    demo = demo_questions()
    questions = [demo[i % len(demo)] for i in range(args.prompts)]  # prompt i is searched with seed i
    overrides = [f"max_total_iterations={args.cap}", "max_new_tokens=64"]
    spec = {"model": model, "config": str(ROOT / "configs" / "hh.yaml"), "overrides": overrides,
            "questions": questions, "threads": args.threads}
    runs = []  # (label, spec, pythonpath)
    if args.baseline:
        base = Path(args.baseline).resolve()
        runs.append(("baseline (one at a time)", dict(spec, config=str(base / "configs" / "hh.yaml"), batch_size=1),
                     base))
    runs += [(f"B = {b}", dict(spec, batch_size=b), ROOT) for b in batch_sizes]
    if args.leaves:  # a different search (not the paper's): its answers are not expected to equal the others
        b = max(batch_sizes)
        runs.append((f"B = {b}, leaves = {args.leaves}",
                     dict(spec, batch_size=b, overrides=overrides + [f"leaves_per_step={args.leaves}"]), ROOT))
    # --repeat N: the runs take turns N times (a shared machine's speed drifts over minutes); each row is the
    # run of median time
    results: dict = {label: [] for label, _, _ in runs}
    for turn in range(args.repeat):
        for label, spec_r, path in runs:
            results[label].append(child(CHILD, spec_r, pythonpath=path))
            print(f"[{name}] {label} done (turn {turn + 1}): {results[label][-1]['seconds']:.1f} s", file=sys.stderr,
                  flush=True)
    return [(label, sorted(results[label], key=lambda r: r["seconds"])[(args.repeat - 1) // 2])
            for label, _, _ in runs]


def throughput_table(title: str, rows: list) -> str:
    lines = [f"### {title}", "",
             "| engine | prompts/hour | s / inner it. | inner it. / s | sequential forwards / prompt | rows / forward "
             "| LM floor s / it. | embedder s / it. | non-LM share | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def per(x, total, spec):
        return "-" if x is None else format(x / total, spec)

    for label, r in rows:
        per_it = r["seconds"] / r["iterations"]
        forwards = r.get("forwards", r["search_forwards"])
        lm = r.get("lm_seconds")
        lines.append(
            f"| {label} | {3600 * r['prompts'] / r['seconds']:.1f} | {per_it:.4f} | {1 / per_it:.1f} "
            f"| {forwards / r['prompts']:.0f} | {r['rows'] / r['forwards'] if 'rows' in r else 1:.1f} "
            f"| {per(lm, r['iterations'], '.4f')} | {per(r.get('embed_seconds'), r['iterations'], '.4f')} "
            f"| {per(None if lm is None else r['seconds'] - lm, r['seconds'], '.0%')} | {r['peak_rss_mb']:.0f} |")
    lines.append("")
    first = dict(rows)
    ones = [r for label, r in rows if label == "B = 1"]
    if ones:
        one = ones[0]
        for label, r in rows:
            if label.startswith("B = ") and label != "B = 1":
                same = ("another search, answers not compared" if "leaves" in label
                        else f"same answers: {r['answers'] == one['answers']}")
                lines.append(f"- {label} vs B = 1: {one['seconds'] / r['seconds']:.2f}x prompts/hour, "
                             f"{one['forwards'] / r['forwards']:.1f}x fewer sequential forwards per prompt, "
                             f"{(one['forwards'] / one['iterations']) / (r['forwards'] / r['iterations']):.1f}x "
                             f"per inner iteration; {same}")
    if "baseline (one at a time)" in first:
        base = first["baseline (one at a time)"]
        for label, r in rows:
            if label.startswith("B = "):
                lines.append(f"- {label} vs baseline: "
                             f"{(base['seconds'] / base['iterations']) / (r['seconds'] / r['iterations']):.2f}x "
                             "inner iterations per second")
    return "\n".join(lines) + "\n"


MEMORY_CHILD = r'''
import json, sys, time
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096)
model = LlamaForCausalLM(config).eval()
params = sum(p.numel() * p.element_size() for p in model.parameters())
context, rows = spec["context"], spec["rows"]
prompt = tuple(range(10, 10 + context))
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
with torch.no_grad():
    import rain.lm as lm
    if hasattr(lm, "Expand"):
        from rain.lm import CachedEngine, Counters, Expand, Prefill
        from rain.sampling import SegmentSpec
        import rain.attention as attention
        engine = CachedEngine(model)
        ctx = engine.run(Prefill(prompt, Counters()))
        spec_ = SegmentSpec(length=2, topk=15, temperature=1.0, greedy=True, stop_ids=frozenset())
        u = torch.rand(rows, 2, generator=torch.Generator().manual_seed(0))
        made = []
        plain = attention.forward_rows
        def counting(model_, rows_):
            logits, new = plain(model_, rows_)
            made.append(sum(k.numel() * k.element_size() * 2 for k in new[0]))
            return logits, new
        import rain.lm
        rain.lm.forward_rows = counting
        before = rss_mb(); open("/proc/self/clear_refs", "w").write("5")
        t = time.perf_counter()
        engine.run(Expand(ctx, Counters(), spec_, u))   # the first token from ctx, then one batched step
        seconds = time.perf_counter() - t
        kv_bytes = made[-1]
    else:  # an earlier revision: DynamicCache expanded to one view per row, then concatenated
        from rain.lm import CachedEngine, SegmentSpec
        engine = CachedEngine(model)
        state = engine.state(prompt)
        spec_ = SegmentSpec(length=2, topk=15, temperature=1.0, greedy=True, stop_ids=frozenset())
        u = torch.rand(rows, 2, generator=torch.Generator().manual_seed(0))
        made = []
        plain = engine._forward
        def counting(ids, kv, keep=1):
            logits, new_kv = plain(ids, kv, keep)
            made.append(sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in new_kv))
            return logits, new_kv
        engine._forward = counting
        before = rss_mb(); open("/proc/self/clear_refs", "w").write("5")
        t = time.perf_counter()
        engine.segments(state, spec_, u)
        seconds = time.perf_counter() - t
        kv_bytes = made[-1]
print("RESULT " + json.dumps({"kv_mb": kv_bytes / 2**20, "peak_extra_mb": hwm_mb() - before, "seconds": seconds,
                              "model_mb": params / 2**20}))
'''


def memory(args) -> str:
    lines = ["### One expansion step: KV materialised and peak memory vs context", "",
             "Random-weight Llama (hidden 768, 12 layers, 12 KV heads, vocab 32k, fp32; 18 KB of KV per token), one "
             "batched step of R candidate rows after a context of C tokens. `KV MB`: key/value bytes the step "
             "creates; `peak +MB`: rise of the process's peak RSS during the step.", "",
             "| engine | rows | context | KV MB | peak +MB | step s |", "|---|---|---|---|---|---|"]
    engines = [("batched (shared prefix)", ROOT)]
    if args.baseline:
        engines.append(("baseline (expand + concat)", Path(args.baseline).resolve()))
    for label, path in engines:
        for rows in (10, 20):
            for context in (256, 512, 1024, 2048):
                r = child(MEMORY_CHILD, {"rows": rows, "context": context, "threads": args.threads}, pythonpath=path)
                lines.append(f"| {label} | {rows} | {context} | {r['kv_mb']:.2f} | {r['peak_extra_mb']:.1f} "
                             f"| {r['seconds']:.3f} |")
                print(f"[memory] {label} R={rows} C={context}: {r}", file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("tiny", "cpu", "memory", "all"))
    parser.add_argument("--baseline", help="checkout of an earlier revision to measure beside this one")
    parser.add_argument("--cap", type=int, default=16, help="inner iterations per prompt (max_total_iterations)")
    parser.add_argument("--prompts", type=int, default=8,
                        help="tiny/cpu: this many prompts, the 8 demo prompts in turn, prompt i with seed i (more than "
                             "B shows the steady state, where a finished search's slot takes the next prompt)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child")
    parser.add_argument("--out", help="also write the tables to this file")
    parser.add_argument("--repeat", type=int, default=1,
                        help="tiny/cpu: run every row this many times, taking turns; report the median")
    parser.add_argument("--leaves", type=int, default=0,
                        help="tiny/cpu: one more row at the largest B with search.leaves_per_step=K (0: none)")
    args = parser.parse_args(argv)
    import torch
    import transformers

    parts = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, transformers "
             f"{transformers.__version__}, {args.threads} thread(s) per child; cap {args.cap} inner iterations per "
             f"prompt; command: python bench/bench_batch.py {' '.join(argv or sys.argv[1:])}\n"]
    if args.what in ("tiny", "all"):
        rows = throughput("tiny", str(tiny_model_dir()), [1, 8], args)
        parts.append(throughput_table("Tiny model (2 layers, hidden 32): overhead is nearly all the cost", rows))
    if args.what in ("cpu", "all"):
        rows = throughput("cpu", "embedded", [1, 4, 8], args)
        parts.append(throughput_table("Embedded SmolLM2-135M-Instruct (fp32), official constants", rows))
    if args.what in ("memory", "all"):
        parts.append(memory(args))
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
