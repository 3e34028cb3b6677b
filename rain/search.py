"""RAIN's search: the inner loop (select, simulate, evaluate, expand, back up) and the outer loop
(commit the most-visited segment, keep its subtree, stop).

Paper symbols and names used here:
  N(s, a)  -> Node.visits (real_visits counts genuine backups only)
  Q(s, a)  -> Node.value, normalised into [0, 1] by ValueBounds for selection
  p(a | s) -> Node.prior
  c        -> search.c_puct;  T_m -> search.min_visits;  V -> search.value_threshold
  "token set"  -> a segment of search.segment_lengths[depth] tokens
  "rewind"     -> the search leaving a branch whose value fell: a commit that is not the child the
                  LM preferred a priori (counted in Stats.rewinds)

Knows: the algorithm of RAIN_ALGORITHM.md §1 with the official constants (config defaults) and
the fixes listed in docs/deviations.md. Does not know: how the LM is run (lm.Engine), how a
verdict is obtained (any evaluator callable), or any benchmark.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from .config import RainConfig
from .formats import AnswerRules, answer_rules, check_question, prompt_ids, prompt_text
from .lm import Counters, Engine, SegmentSpec, topk_distribution
from .tree import (Node, ValueBounds, add_children, backup, clamp_greedy, mix_priors, most_visited,
                   needs_widening, select_child, widen_with)


@dataclass
class Stats:
    """What one answer cost. LM counters include the judge's forwards (also given apart)."""

    seconds: float = 0.0
    new_tokens: int = 0
    forward_calls: int = 0
    tokens_fed: int = 0
    sampled_tokens: int = 0
    judge_calls: int = 0
    judge_cache_hits: int = 0
    judge_forward_calls: int = 0
    judge_tokens_fed: int = 0
    embed_calls: int = 0
    inner_iterations: int = 0
    commits: int = 0
    rewinds: int = 0
    widenings: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    """An answer: its text (answer only), token ids, the full prompt text, stats and an optional trace."""

    text: str
    token_ids: list
    prompt: str
    stats: Stats
    trace: list = field(default_factory=list)


class PromptTooLong(ValueError):
    """The prompt alone reaches the length limit."""


def answer_limit(prompt_len: int, search) -> int:
    """Most answer tokens allowed: the room under search.max_length, and search.max_new_tokens."""
    limit = search.max_length - prompt_len
    return limit if search.max_new_tokens is None else min(limit, search.max_new_tokens)


def start_prompt(tokenizer, question: str, cfg: RainConfig) -> list:
    """Validated prompt ids: the question is a non-empty string and the prompt leaves room for an answer."""
    check_question(question)
    ids = prompt_ids(tokenizer, question, cfg.prompt)
    if len(ids) >= cfg.search.max_length:
        raise PromptTooLong(f"prompt is {len(ids)} tokens, not below search.max_length={cfg.search.max_length}")
    return ids


class Rain:
    """RAIN over one frozen model. Create once per process: the judge's fixed prompt part is cached across questions."""

    def __init__(self, engine: Engine, tokenizer, cfg: RainConfig, *, evaluator: Callable, embedder,
                 judge_counter: Optional[Callable] = None):
        self.engine, self.tokenizer, self.cfg, self.s = engine, tokenizer, cfg, cfg.search
        self.evaluator, self.embedder = evaluator, embedder
        self.rules: AnswerRules = answer_rules(tokenizer, engine.model, cfg.prompt, cfg.search.stop_chars)
        self.judge_counter = judge_counter

    # ------------------------------------------------------------------ outer loop
    def generate(self, question: str, *, seed: Optional[int] = None,
                 progress: Optional[Callable] = None) -> GenerationResult:
        """RAIN's answer to `question`. `progress(stats, answer_text)` is called after every inner iteration."""
        t0 = time.perf_counter()
        prompt = start_prompt(self.tokenizer, question, self.cfg)
        self.question, self.prompt = question, tuple(prompt)
        self.prompt_end = self.tokenizer.decode(prompt, skip_special_tokens=True)[-1:]  # a clause may end there
        self.gen = torch.Generator().manual_seed(self.s.seed if seed is None else seed)
        self.stats, self.memo, self.bounds, trace = Stats(), {}, ValueBounds(), []
        before, embeds_before = self.engine.counters.snapshot(), self.embedder.calls
        judge_before = self.judge_counter() if self.judge_counter else Counters()
        self.answer: tuple = ()
        root = Node(depth=0)
        self.engine.anchor("prefix", self.prompt)
        cap = self.s.max_total_iterations
        while not self._answer_done(self.answer):
            # 1. search: top the root's visits up to max_iterations, with at least min_fresh_iterations new ones
            budget = max(self.s.max_iterations - root.real_visits, self.s.min_fresh_iterations)
            if cap is not None:
                budget = min(budget, cap - self.stats.inner_iterations)
            for _ in range(budget):
                self._iterate(root)
                self.stats.inner_iterations += 1
                if progress:
                    progress(self.stats, self.rules.text(self.tokenizer, self.answer))
                best = most_visited(root)
                if best and best.real_visits > self.s.min_visits and best.value > self.s.value_threshold:
                    break
            # 2. commit the most-visited child, keep its subtree
            best = most_visited(root)
            if best is None:  # the root could not be expanded: the answer is complete
                break
            if self.s.trace:
                trace.append(self._trace_entry(root))
            if best is not max(root.children.values(), key=lambda ch: ch.prior):
                self.stats.rewinds += 1
            self.answer += best.tokens
            self.stats.commits += 1
            root, best.parent = best, None
            if root.children:
                mix_priors(root, self.s.root_prior_mix)
            self.engine.anchor("prefix", self.prompt + self.answer)
            if cap is not None and self.stats.inner_iterations >= cap:
                break
        answer = self._truncate(self.answer)
        self._fill_stats(before, embeds_before, judge_before, t0, new_tokens=len(answer))
        return GenerationResult(self.rules.text(self.tokenizer, answer), list(answer),
                                prompt_text(self.tokenizer, question, self.cfg.prompt), self.stats, trace)

    def _fill_stats(self, before: Counters, embeds_before: int, judge_before: Counters, t0: float, *,
                    new_tokens: int) -> None:
        used = self.engine.counters.minus(before)
        self.stats.forward_calls, self.stats.tokens_fed = used.forward_calls, used.tokens_fed
        self.stats.sampled_tokens = used.sampled_tokens
        if self.judge_counter:
            judge = self.judge_counter().minus(judge_before)
            self.stats.judge_forward_calls, self.stats.judge_tokens_fed = judge.forward_calls, judge.tokens_fed
        self.stats.embed_calls = self.embedder.calls - embeds_before
        self.stats.new_tokens = new_tokens
        self.stats.seconds = time.perf_counter() - t0

    def _trace_entry(self, root: Node) -> dict:
        text = self.rules.text(self.tokenizer, self.answer)
        return {"committed": text, "children": [
            {"segment": self.tokenizer.decode(list(ch.tokens)), "visits": ch.visits, "real_visits": ch.real_visits,
             "value": ch.value, "prior": ch.prior} for ch in root.children.values()]}

    # ------------------------------------------------------------------ stop rules
    def _room(self, answer: tuple) -> int:
        """Tokens the answer may still grow by (length limit and max_new_tokens)."""
        return answer_limit(len(self.prompt), self.s) - len(answer)

    def _answer_done(self, answer: tuple) -> bool:
        return self._room(answer) <= 0 or self.rules.finished(self.tokenizer, answer)

    def _truncate(self, answer: tuple) -> tuple:
        """Cut the answer just after its first stop token and at the token limits."""
        for i, t in enumerate(answer):
            if t in self.rules.stop_ids:
                answer = answer[:i + 1]
                break
        return answer[:answer_limit(len(self.prompt), self.s)]

    # ------------------------------------------------------------------ inner loop
    def _iterate(self, root: Node) -> None:
        # 1. select a leaf, widening crowded bad nodes on the way down
        node = root
        while node.children:
            self._maybe_widen(node, root)
            node = select_child(node, c=self.s.c_puct, bounds=self.bounds, unvisited=self.s.unvisited_value)
        path = node.path_from(root)
        leaf_answer = self.answer + tuple(t for n in path for t in n.tokens)
        if node.terminal is None:
            node.terminal = self._answer_done(leaf_answer)
        # 2. simulate: roll out to the end of the clause (or to EOS)
        state, rollout = None, []
        if not node.terminal:
            state = self.engine.state(self.prompt + leaf_answer, keep_as="leaf")
            rollout = self._rollout(state, leaf_answer)
        # 3. self-evaluate the partial answer
        value = self._evaluate(self._truncate(leaf_answer + tuple(rollout)))
        # 4. expand the leaf
        if not node.terminal:
            self._expand(node, state, is_root=node is root, room=self._room(leaf_answer))
        # 5. back up, with the similarity update of siblings
        backup(node, root, value, self._path_embeddings(path, rollout), bounds=self.bounds,
               sim_threshold=self.s.similarity_threshold, sim_weight=self.s.similarity_weight)

    def _rollout(self, state, leaf_answer: tuple) -> list:
        room = self._room(leaf_answer)
        if self.s.rollout == "clause":
            done = lambda new: self.rules.clause_ended(self.tokenizer, leaf_answer + tuple(new),  # noqa: E731
                                                       before=self.prompt_end)
        else:
            done = lambda new: self.rules.finished(self.tokenizer, leaf_answer + tuple(new))  # noqa: E731
        return self.engine.decode(state, max_tokens=room, done=done, generator=self.gen)

    def _evaluate(self, answer: tuple) -> float:
        text = self.rules.text(self.tokenizer, answer)
        if text in self.memo:
            self.stats.judge_cache_hits += 1
            return self.memo[text]
        value = float(self.evaluator(self.question, text))
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"evaluator returned {value}, outside [-1, 1]")
        self.stats.judge_calls += 1
        self.memo[text] = value
        return value

    def _path_embeddings(self, path: list, rollout: list) -> list:
        """One text per path node: from the start of its segment to the end of the rollout."""
        if not path:
            return []
        texts, tail = [], tuple(rollout)
        for node in reversed(path):
            tail = node.tokens + tail
            texts.append(self.tokenizer.decode(list(tail), skip_special_tokens=True))
        texts.reverse()
        if self.s.engine == "reference":  # the official cost structure: one encoder call per node
            return [self.embedder.embed([t])[0] for t in texts]
        return list(self.embedder.embed(texts))

    # ------------------------------------------------------------------ expansion
    def _segment_length(self, depth: int, room: int) -> int:
        return max(1, min(self.s.segment_lengths[min(depth, len(self.s.segment_lengths) - 1)], room))

    def _expand(self, node: Node, state, *, is_root: bool, room: int) -> None:
        mix = self.s.root_prior_mix if is_root else 0.0
        length = self._segment_length(node.depth, room)
        if length == 1:
            # children: the top num_candidates at the sampling temperature; kept for widening: the ranking at T = 1
            probs, ids = topk_distribution(state.logits.unsqueeze(0), self.s.num_candidates, self.s.temperature)
            add_children(node, [((int(t),), float(p)) for t, p in zip(ids[0], probs[0])], uniform_mix=mix)
            probs, ids = topk_distribution(state.logits.unsqueeze(0), max(self.s.widen_max_children, 1))
            node.candidates = [((int(t),), float(p)) for t, p in zip(ids[0], probs[0])]
            return
        node.candidates = self._propose(state, length, samples=self.s.sample_attempts,
                                        keep=self.s.num_candidates)
        add_children(node, node.candidates, uniform_mix=mix)

    def _propose(self, state, length: int, *, samples: int, keep: int) -> list:
        """Greedy segment plus up to keep-1 distinct sampled ones; greedy's probability clamped."""
        spec = SegmentSpec(length=length, topk=self.s.sample_topk, temperature=self.s.temperature, greedy=True,
                           stop_ids=self.rules.stop_ids)
        u = torch.rand(1 + samples, length, generator=self.gen)
        rows = self.engine.segments(state, spec, u)
        greedy, sampled = rows[0], []
        for seg, p in rows[1:]:
            if len(sampled) == keep - 1:
                break
            if seg != greedy[0] and seg not in [s for s, _ in sampled]:
                sampled.append((seg, p))
        clamped = clamp_greedy(greedy[1], [p for _, p in sampled])
        return [(greedy[0], clamped)] + sampled

    def _maybe_widen(self, node: Node, root: Node) -> None:
        """Dynamic widening: one more single-token child from the stored ranking, or fresh greedy + samples."""
        path = node.path_from(root)
        answer = self.answer + tuple(t for n in path for t in n.tokens)
        length = self._segment_length(node.depth, self._room(answer))
        if not needs_widening(node, segment_length=length, max_children=self.s.widen_max_children,
                              variance_scale=self.s.widen_variance):
            return
        mix = self.s.root_prior_mix if node is root else 0.0
        if length == 1:
            widen_with(node, node.candidates, uniform_mix=mix)
        else:
            fresh = self._propose(self.engine.state(self.prompt + answer), length,
                                  samples=self.s.widen_sample_attempts, keep=2)
            widen_with(node, fresh + node.candidates, uniform_mix=mix)
        self.stats.widenings += 1
