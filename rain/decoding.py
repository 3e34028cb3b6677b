"""Decoding strategies behind one signature, and their registry.

`rain_generate` and `vanilla_generate` take (model, tokenizer, question, config) and return a
GenerationResult. Knows: how to assemble engine, evaluator and embedder for a model (once per
process, reused across questions) and the vanilla baseline (KV-cached greedy decoding with the
same stop rules as RAIN). Does not know: benchmarks.
"""

from __future__ import annotations

import functools
import time
import weakref
from typing import Callable, Optional

from .config import RainConfig
from .embed import Embedder
from .evaluate import SelfEvaluator
from .formats import answer_rules, prompt_text
from .lm import CachedEngine, Counters, make_engine
from .search import GenerationResult, Rain, Stats, answer_limit, start_prompt


@functools.lru_cache(maxsize=4)
def shared_embedder(name: str = "embedded") -> Embedder:
    """One sentence embedder per process and name."""
    return Embedder(name)


class _CountingEngine:
    """The judge's view of the engine: forwards go to the same model, counted apart."""

    def __init__(self, engine):
        self.engine, self.counters = engine, Counters()

    def last_probs(self, anchor, shared, tails):
        before = self.engine.counters.snapshot()
        out = self.engine.last_probs(anchor, shared, tails)
        used = self.engine.counters.minus(before)
        self.counters.forward_calls += used.forward_calls
        self.counters.tokens_fed += used.tokens_fed
        return out


_SEARCHERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def searcher(model, tokenizer, config: RainConfig, *, evaluator: Optional[Callable] = None,
             embedder=None) -> Rain:
    """The Rain searcher for this model, tokenizer and config, built once and reused (judge cache kept)."""
    key = (id(tokenizer), config, id(evaluator), id(embedder))
    per_model = _SEARCHERS.setdefault(model, {})
    if key not in per_model:
        engine = make_engine(model, tokenizer, config.search.engine)
        judge_counter = None
        if evaluator is None:
            counting = _CountingEngine(engine)
            evaluator = SelfEvaluator(counting, tokenizer, config.judge)
            judge_counter = counting.counters.snapshot
        embedder = embedder or shared_embedder(config.judge.embedder)
        per_model.clear()  # one live searcher per model: its KV caches are the memory that matters
        per_model[key] = Rain(engine, tokenizer, config, evaluator=evaluator, embedder=embedder,
                              judge_counter=judge_counter)
    return per_model[key]


def rain_generate(model, tokenizer, question: str, config: Optional[RainConfig] = None, *,
                  seed: Optional[int] = None, evaluator: Optional[Callable] = None,
                  embedder=None, progress: Optional[Callable] = None) -> GenerationResult:
    """RAIN's answer. `evaluator(question, answer) -> float in [-1, 1]` replaces self-evaluation when given;
    `progress(stats, answer_so_far)` is called after every inner iteration."""
    config = config or RainConfig()
    search = searcher(model, tokenizer, config, evaluator=evaluator, embedder=embedder)
    return search.generate(question, seed=seed, progress=progress)


def vanilla_generate(model, tokenizer, question: str, config: Optional[RainConfig] = None, *,
                     seed: Optional[int] = None) -> GenerationResult:
    """The baseline: greedy decoding with a KV cache, the same prompt, limits and stop rules as RAIN."""
    config = config or RainConfig()
    t0 = time.perf_counter()
    prompt = tuple(start_prompt(tokenizer, question, config))
    rules = answer_rules(tokenizer, model, config.prompt, config.search.stop_chars)
    engine = CachedEngine(model)
    answer = engine.decode(engine.state(prompt), max_tokens=answer_limit(len(prompt), config.search),
                           done=lambda new: rules.finished(tokenizer, new))
    stats = Stats(new_tokens=len(answer), forward_calls=engine.counters.forward_calls,
                  tokens_fed=engine.counters.tokens_fed, sampled_tokens=engine.counters.sampled_tokens)
    stats.seconds = time.perf_counter() - t0
    return GenerationResult(rules.text(tokenizer, answer), list(answer),
                            prompt_text(tokenizer, question, config.prompt), stats)


DECODERS = {"rain": rain_generate, "vanilla": vanilla_generate}
