"""Decoding strategies behind one signature, and their registry.

`rain_generate` and `vanilla_generate` take (model, tokenizer, question, config) and return a
GenerationResult. For many questions, build one `rain.Searcher` and call `generate` or
`generate_many` (B searches at once): the fixed prompt heads are then computed once. Knows: the
vanilla baseline (KV-cached greedy decoding with the same prompt, limits and stop rules as RAIN).
Does not know: benchmarks.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Optional

from .config import RainConfig
from .lm import Counters, Expand, Prefill, Rollout
from .search import GenerationResult, Searcher, Stats, answer_limit, drive, start_prompt
from .formats import messages_text, prompt_text


def rain_generate(model, tokenizer, question: str, config: Optional[RainConfig] = None, *,
                  seed: Optional[int] = None, evaluator: Optional[Callable] = None,
                  embedder=None, progress: Optional[Callable] = None,
                  searcher: Optional[Searcher] = None) -> GenerationResult:
    """RAIN's answer. `evaluator(question, answer) -> float in [-1, 1]` replaces self-evaluation when given;
    `progress(stats, answer_so_far)` is called after every inner iteration. Pass `searcher` to reuse one."""
    searcher = searcher or Searcher(model, tokenizer, config, evaluator=evaluator, embedder=embedder)
    return searcher.generate(question, seed=seed, progress=progress)


def vanilla_search(searcher: Searcher, question: str, *, messages=None):
    """The baseline as a request generator (so it can share forwards with searches): greedy decoding
    with the same prompt, limits and stop rules as RAIN. `messages`: as in Searcher.start."""
    t0 = time.perf_counter()
    cfg, tokenizer, rules = searcher.cfg, searcher.tokenizer, searcher.rules
    prompt = tuple(start_prompt(tokenizer, question, cfg, messages))
    counters = Counters()
    ctx = yield Prefill(prompt, counters)
    done = lambda new: bool(new) and rules.finished_tail(tokenizer, new, 1)  # noqa: E731
    answer = (yield Expand(ctx, counters, rollout=Rollout(answer_limit(len(prompt), cfg.search), done, None))).rollout
    stats = Stats(new_tokens=len(answer), forward_calls=counters.forward_calls, tokens_fed=counters.tokens_fed,
                  sampled_tokens=counters.sampled_tokens)
    stats.seconds = time.perf_counter() - t0
    text = prompt_text(tokenizer, question, cfg.prompt) if messages is None else messages_text(tokenizer, messages,
                                                                                                 cfg.prompt)
    return GenerationResult(rules.text(tokenizer, answer), list(answer), text, stats)


def vanilla_generate(model, tokenizer, question: str, config: Optional[RainConfig] = None, *,
                     seed: Optional[int] = None, searcher: Optional[Searcher] = None) -> GenerationResult:
    """The baseline: greedy decoding with a KV cache, the same prompt, limits and stop rules as RAIN."""
    searcher = searcher or vanilla_searcher(model, tokenizer, config)
    ((_, result),) = drive(searcher, [(0, vanilla_search(searcher, question))])
    if isinstance(result, BaseException):
        raise result
    return result


def vanilla_searcher(model, tokenizer, config: Optional[RainConfig] = None) -> Searcher:
    """A searcher for vanilla decoding only: no self-evaluator prompt prefilled, no sentence embedder loaded."""
    return Searcher(model, tokenizer, config, evaluator=lambda q, a: 0.0, embedder=_NoEmbedder())


class _NoEmbedder:
    def embed(self, texts):
        raise AssertionError("vanilla decoding embeds nothing")


def answer_task(searcher: Searcher, question: str, seed: Optional[int], mode: str = "both"):
    """RAIN and/or vanilla answers to one question, as one request generator (mode rain, vanilla or both);
    returns {"rain": result or None, "vanilla": result or None}."""
    out = {"rain": None, "vanilla": None}
    if mode != "vanilla":
        out["rain"] = yield from searcher.search(searcher.start(question, seed))
    if mode != "rain":
        out["vanilla"] = yield from vanilla_search(searcher, question)
    return out


def generate_many(searcher: Searcher, jobs: Iterable, *, batch_size: int = 1) -> Iterator[tuple]:
    """Answer many questions, `batch_size` searches at once. `jobs` yields (key, question, seed, mode);
    yields (key, answer_task's dict) as each finishes, or (key, exception) if its search failed."""
    tasks = ((key, answer_task(searcher, q, seed, mode)) for key, q, seed, mode in jobs)
    yield from drive(searcher, tasks, batch_size=batch_size)


DECODERS = {"rain": rain_generate, "vanilla": vanilla_generate}
