"""RAIN on a GPU with a random-weight model of real size (Llama-2-7B shape, bfloat16; no download).

    python bench/bench_gpu.py                      # on a CUDA machine: the figures of issue 7
    python bench/bench_gpu.py --shape tiny --device cpu --prompts 2 --cap 2    # a smoke run anywhere

The model is built from a config on the device (random weights), so only speed and memory are
meaningful: a random model's rollouts rarely end a clause, so they run to the token cap, which makes
iterations longer than a real model's. The sentence embedder is a random BERT of all-MiniLM-L6-v2's shape
on the same device (same cost). The tokenizer is `--tokenizer DIR` (e.g. a saved SmolLM2 tokenizer
folder, carried to the machine), else a byte-level BPE trained here; the model's vocabulary is the
tokenizer's. Official constants (configs/hh.yaml), a fixed cap of inner iterations per prompt.

Prints: seconds per inner iteration and prompts/hour at B = 1 and B = 16 (and the ratio), the
RAIN / cached-vanilla time ratio (transformers' generate with its KV cache, greedy, same prompts and
token budget), the share of wall time outside the engine's forward passes (non-LM work), the peak GPU
memory of B = 16 searches over ~2k-token contexts (above the weights), and B = 16 with
search.leaves_per_step=4 (the opt-in virtual loss; `--leaves 0` skips it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


class RandomMiniLM:
    """all-MiniLM-L6-v2's shape with random weights, on the model's device: the embedder's cost, not its values."""

    def __init__(self, tokenizer, device, dtype):
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512)
        self.model = BertModel(config).to(device=device, dtype=dtype).eval()
        # its own copy: drive calls the embedder on a second thread while the search uses the LM's tokenizer
        self.tokenizer, self.device, self.calls = copy.deepcopy(tokenizer), device, 0

    @torch.no_grad()
    def embed(self, texts):
        self.calls += 1
        ids = [[i % 30522 for i in self.tokenizer(t, add_special_tokens=False)["input_ids"][:256]] or [0]
               for t in texts]
        width = max(len(x) for x in ids)
        batch = torch.tensor([x + [0] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        hidden = self.model(input_ids=batch, attention_mask=mask).last_hidden_state.float()
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()


def load_tokenizer(path):
    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    import tiny

    return tiny.train_tokenizer("byte", vocab_size=2000)


def build_model(shape: str, vocab: int, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, bos_token_id=0, eos_token_id=1,
                         pad_token_id=0, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(previous)
    model.requires_grad_(False)
    model.generation_config.pad_token_id = 0
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_searches(searcher, questions, batch_size, device) -> dict:
    from rain.decoding import generate_many

    engine = searcher.engine
    lm_time = [0.0]
    plain = engine.step

    def timed_step():
        sync(device)
        t = time.perf_counter()
        plain()
        sync(device)
        lm_time[0] += time.perf_counter() - t

    engine.step = timed_step
    before = engine.batches.forwards
    sync(device)
    t0 = time.perf_counter()
    results = []
    for _, out in generate_many(searcher, [(i, q, i, "rain") for i, q in enumerate(questions)], batch_size=batch_size):
        if isinstance(out, BaseException):
            raise out
        results.append(out["rain"])
    sync(device)
    seconds = time.perf_counter() - t0
    engine.step = plain
    iterations = sum(r.stats.inner_iterations for r in results)
    return {"batch_size": batch_size, "prompts": len(questions), "seconds": seconds, "iterations": iterations,
            "s_per_iteration": seconds / iterations, "prompts_per_hour": 3600 * len(questions) / seconds,
            "new_tokens": sum(r.stats.new_tokens for r in results), "lm_seconds": lm_time[0],
            "non_lm_share": 1 - lm_time[0] / seconds, "forwards": engine.batches.forwards - before}


def vanilla(model, tokenizer, questions, cfg, new_tokens, device) -> dict:
    import rain

    sync(device)
    t0 = time.perf_counter()
    produced = 0
    for q in questions:
        ids = torch.tensor([rain.prompt_ids(tokenizer, q, cfg.prompt)], device=device)
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             use_cache=True)
        produced += out.shape[1] - ids.shape[1]
    sync(device)
    return {"seconds": time.perf_counter() - t0, "new_tokens": produced}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-2-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokenizer", help="a tokenizer folder (default: a byte-level BPE trained here)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the B = 16 run (B = 1 runs 2)")
    parser.add_argument("--cap", type=int, default=8, help="inner iterations per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--leaves", type=int, default=4,
                        help="also B = 16 with search.leaves_per_step=K (opt-in virtual loss; 0 or 1: skip)")
    parser.add_argument("--out", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    import rain

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tokenizer = load_tokenizer(args.tokenizer)
    t = time.perf_counter()
    model = build_model(args.shape, len(tokenizer), device, dtype)
    print(f"model built in {time.perf_counter() - t:.1f} s: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} "
          f"B parameters, {args.dtype} on {device}", flush=True)
    cfg = rain.load_config(ROOT / "configs" / "hh.yaml",
                           [f"max_total_iterations={args.cap}", f"max_new_tokens={args.new_tokens}"])
    embedder = RandomMiniLM(tokenizer, device, dtype)
    searcher = rain.Searcher(model, tokenizer, cfg, embedder=embedder)
    base = ["How do I pick a lock?", "What is the best way to learn to cook?", "Can you recommend a book about space?",
            "How can I get back at a coworker who embarrassed me?", "What household items are dangerous to mix?",
            "Write a short poem about the sea.", "How do vaccines work?", "What should I pack for a hiking trip?"]
    questions = [base[i % len(base)] + f" (variant {i})" for i in range(args.prompts)]
    figures = {"shape": args.shape, "dtype": args.dtype, "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "cap": args.cap}
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    figures["B1"] = run_searches(searcher, questions[:2], 1, device)
    print("B = 1:", json.dumps(figures["B1"]), flush=True)
    figures["B16"] = run_searches(searcher, questions, 16, device)
    print("B = 16:", json.dumps(figures["B16"]), flush=True)
    figures["B16_vs_B1_prompts_per_hour"] = figures["B16"]["prompts_per_hour"] / figures["B1"]["prompts_per_hour"]
    if args.leaves > 1:  # the opt-in knob, beside: a different search, so only its cost is comparable
        leaves = rain.Searcher(model, tokenizer, cfg.replace(search={"leaves_per_step": args.leaves}), embedder=embedder,
                               engine=searcher.engine)
        figures["B16_leaves"] = dict(run_searches(leaves, questions, 16, device), leaves_per_step=args.leaves)
        print(f"B = 16, leaves_per_step = {args.leaves}:", json.dumps(figures["B16_leaves"]), flush=True)
    van = vanilla(model, tokenizer, questions[:2], cfg, args.new_tokens, device)
    figures["vanilla"] = van
    figures["rain_over_vanilla_time_B1"] = (figures["B1"]["seconds"] / max(figures["B1"]["new_tokens"], 1)) / (
        van["seconds"] / van["new_tokens"])
    print("vanilla:", json.dumps(van), flush=True)

    # peak memory: 16 searches over ~2k-token contexts (prompt ~1,900 tokens, a short cap)
    filler = "Please answer carefully and consider every detail of the following situation. "
    long_q = [q + " " + filler * 400 for q in questions]
    room = cfg.search.max_length - len(rain.prompt_ids(tokenizer, "x", cfg.prompt)) - 100
    long_q = [tokenizer.decode(tokenizer(q, add_special_tokens=False)["input_ids"][:room]) for q in long_q]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    long_searcher = rain.Searcher(model, tokenizer, cfg.replace(search={"max_total_iterations": 2, "max_new_tokens": 16},
                                                                run={"max_prompt_tokens": 4096}),
                                  embedder=embedder, engine=searcher.engine)
    figures["B16_2k"] = run_searches(long_searcher, long_q, 16, device)
    if device.type == "cuda":
        figures["B16_2k"]["peak_gpu_gb_above_weights"] = (torch.cuda.max_memory_allocated(device) - weights) / 2**30
        figures["weights_gb"] = weights / 2**30
    print("B = 16 at ~2k context:", json.dumps(figures["B16_2k"]), flush=True)
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
