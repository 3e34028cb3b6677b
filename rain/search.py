"""RAIN's search: the inner loop (select, simulate, evaluate, expand, back up) and the outer loop
(commit the most-visited segment, keep its subtree, stop), for one question or many at once.

Paper symbols and names used here:
  N(s, a)  -> Node.visits (real_visits counts genuine backups only)
  Q(s, a)  -> Node.value, normalised into [0, 1] by ValueBounds for selection
  p(a | s) -> Node.prior
  c        -> search.c_puct;  T_m -> search.min_visits;  V -> search.value_threshold
  "token set"  -> a segment of search.segment_lengths[depth] tokens
  "rewind"     -> the search leaving a branch whose value fell; measured by Stats.backtracks and
                  Stats.leader_changes (Stats.non_greedy_commits only says the answer left the LM's favourite)

Shape: a `Searcher` is long-lived (model, engine, evaluator, embedder, config); a `SearchState` is one
question's search (tree, answer, memo, statistics, random generator). `Searcher.search(state)` is a
generator: it yields what it needs from the LM (`rain.lm` requests) and the embedder (`Embed`), and
`drive` serves the requests of up to B searches together, in shared forward passes, with the embedder
on a second thread beside them. A search's answer depends only on its own requests' results, so neither B
nor timing changes it.

Knows: the algorithm of RAIN_ALGORITHM.md §1 with the official constants (config defaults) and
the fixes listed in docs/deviations.md. Does not know: how the LM is run (which engine), how a
verdict is obtained (any evaluator callable), or any benchmark.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional

import torch

from .config import RainConfig
from .evaluate import SelfEvaluator
from .formats import (TAIL, AnswerRules, answer_rules, check_question, messages_ids, messages_text, prompt_ids,
                      prompt_text)
from .lm import Context, Counters, Engine, Expand, Prefill, Rollout, make_engine
from .sampling import SegmentSpec, common_prefix, topk_distribution
from .tree import (Node, ValueBounds, add_children, add_virtual_loss, backup, clamp_greedy, mix_priors,
                   most_visited, needs_widening, select_child, widen_with)


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
    non_greedy_commits: int = 0
    """Commits whose segment is not the root child with the highest prior (the LM's a-priori favourite)."""
    leader_changes: int = 0
    """Inner iterations after which the most-visited root child is another than before it (summed over steps)."""
    backtracks: int = 0
    """Inner iterations that leave the root child the previous iterations went through, after that child's value
    fell below what it was when the search entered it: the search rewinding out of a branch it judged worse."""
    widenings: int = 0
    """Children added by dynamic widening."""

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


@dataclass
class Embed:
    """A request for sentence embeddings of `texts` (served by `drive`, batched across searches)."""

    texts: list


class PromptTooLong(ValueError):
    """The prompt alone reaches the length limit."""


def answer_limit(prompt_len: int, search) -> int:
    """Most answer tokens allowed: the room under search.max_length, and search.max_new_tokens."""
    limit = search.max_length - prompt_len
    return limit if search.max_new_tokens is None else min(limit, search.max_new_tokens)


def start_prompt(tokenizer, question: str, cfg: RainConfig, messages=None) -> list:
    """Validated prompt ids: the question is a non-empty string and the prompt leaves room for an answer.
    With `messages` (an OpenAI-style conversation, see formats.messages_text) the prompt is theirs."""
    check_question(question)
    ids = prompt_ids(tokenizer, question, cfg.prompt) if messages is None else messages_ids(tokenizer, messages,
                                                                                              cfg.prompt)
    if len(ids) >= cfg.search.max_length:
        raise PromptTooLong(f"prompt is {len(ids)} tokens, not below search.max_length={cfg.search.max_length}")
    return ids


def prompt_head(tokenizer, cfg: RainConfig) -> tuple:
    """The token ids every policy prompt of this format starts with (the few-shot dialogue, a system prompt)."""
    a, b = (prompt_ids(tokenizer, q, cfg.prompt) for q in ("x", "y"))
    return tuple(a[:common_prefix(tuple(a), tuple(b))])


def best_candidates(rows: list, keep: int) -> list:
    """Greedy row plus up to keep-1 distinct sampled rows (in draw order); greedy's probability clamped."""
    greedy, sampled = rows[0], []
    for seg, p in rows[1:]:
        if len(sampled) == keep - 1:
            break
        if seg != greedy[0] and seg not in [s for s, _ in sampled]:
            sampled.append((seg, p))
    return [(greedy[0], clamp_greedy(greedy[1], [p for _, p in sampled]))] + sampled


@dataclass(eq=False)
class SearchState:
    """One question's search, passed explicitly: its tree, answer, memo, statistics and random generator."""

    question: str
    prompt: tuple
    gen: torch.Generator
    prompt_end: str
    """The prompt's last character (a clause may end there while the answer is empty)."""
    messages: Optional[tuple] = None
    """The conversation the prompt was built from, when it was not the bare question."""
    root: Node = field(default_factory=lambda: Node(depth=0))
    answer: tuple = ()
    memo: dict = field(default_factory=dict)
    """Judged text -> value."""
    embedded: dict = field(default_factory=dict)
    """Text -> sentence embedding (the same texts recur whenever a leaf and its rollout do)."""
    bounds: ValueBounds = field(default_factory=ValueBounds)
    stats: Stats = field(default_factory=Stats)
    trace: list = field(default_factory=list)
    lm: Counters = field(default_factory=Counters)
    judge: Counters = field(default_factory=Counters)
    committed: Optional[Context] = None
    leaf: Optional[Context] = None
    judged: Optional[Context] = None
    started: float = field(default_factory=time.perf_counter)


class Searcher:
    """RAIN over one frozen model. Build once and reuse: the fixed prompt heads are computed once."""

    def __init__(self, model, tokenizer, config: Optional[RainConfig] = None, *, evaluator: Optional[Callable] = None,
                 embedder=None, engine: Optional[Engine] = None):
        from .embed import shared_embedder

        self.cfg = config or RainConfig()
        self.s, self.tokenizer = self.cfg.search, tokenizer
        self.engine = engine or make_engine(model, self.s.engine, max_length=self.s.max_length)
        self.judge = SelfEvaluator(self.engine, tokenizer, self.cfg.judge) if evaluator is None else None
        self.evaluator = evaluator or self.judge
        self.embedder = embedder or shared_embedder(self.cfg.judge.embedder, str(self.engine.device))
        self.rules: AnswerRules = answer_rules(tokenizer, model, self.cfg.prompt, self.s.stop_chars)
        head = prompt_head(tokenizer, self.cfg)
        if len(head) >= 8:
            self.engine.share(head)

    # ------------------------------------------------------------------ entry points
    def start(self, question: str, seed: Optional[int] = None, *, messages=None) -> SearchState:
        """A search of `question`. With `messages` (an OpenAI-style conversation ending with the user's turn) the
        policy prompt is the conversation's, and `question` (its last user message) is what the judge sees."""
        prompt = tuple(start_prompt(self.tokenizer, question, self.cfg, messages))
        return SearchState(question=question, prompt=prompt,
                           gen=torch.Generator().manual_seed(self.s.seed if seed is None else seed),
                           prompt_end=self.tokenizer.decode(list(prompt), skip_special_tokens=True)[-1:],
                           messages=None if messages is None else tuple(messages))

    def generate(self, question: str, *, seed: Optional[int] = None, progress: Optional[Callable] = None):
        """RAIN's answer to `question`. `progress(stats, answer_text)` is called after every inner iteration."""
        ((_, result),) = drive(self, [(0, self.search(self.start(question, seed), progress))], batch_size=1)
        if isinstance(result, BaseException):
            raise result
        return result

    # ------------------------------------------------------------------ outer loop
    def search(self, st: SearchState, progress: Optional[Callable] = None):
        """The whole question as a generator of requests; returns the GenerationResult."""
        s, root = self.s, st.root
        st.committed = yield Prefill(st.prompt, st.lm, compact=True)
        cap = s.max_total_iterations
        while not self._answer_done(st, st.answer):
            # 1. search: top the root's visits up to max_iterations, with at least min_fresh_iterations new ones
            budget = max(s.max_iterations - root.real_visits, s.min_fresh_iterations)
            if cap is not None:
                budget = min(budget, cap - st.stats.inner_iterations)
            leader, current = most_visited(root), None  # current: (root child being explored, its value on entry)

            def counted(branch, before):
                """Book one backed-up inner iteration: rewinds, the iteration count, progress, leader changes."""
                nonlocal leader, current
                if current is None or branch is not current[0]:
                    if current is not None and current[0].value < current[1]:
                        st.stats.backtracks += 1
                    current = (branch, before) if branch is not None else None
                st.stats.inner_iterations += 1
                if progress:
                    progress(st.stats, self.rules.text(self.tokenizer, st.answer))
                best = most_visited(root)
                if leader is not None and best is not leader:
                    st.stats.leader_changes += 1
                leader = best

            done = 0
            while done < budget:
                if s.leaves_per_step == 1:
                    counted(*(yield from self._iterate(st, root)))
                    done += 1
                else:
                    done += yield from self._step(st, root, min(s.leaves_per_step, budget - done), counted)
                best = most_visited(root)
                if best and best.real_visits > s.min_visits and best.value > s.value_threshold:
                    break
            # 2. commit the most-visited child, keep its subtree
            best = most_visited(root)
            if best is None:  # the root could not be expanded: the answer is complete
                break
            if s.trace:
                st.trace.append(self._trace_entry(st, root, best))
            if best is not max(root.children.values(), key=lambda ch: ch.prior):
                st.stats.non_greedy_commits += 1
            st.answer += best.tokens
            st.stats.commits += 1
            root, best.parent = best, None
            if root.children:
                mix_priors(root, s.root_prior_mix)
            if cap is not None and st.stats.inner_iterations >= cap:
                break
            if not self._answer_done(st, st.answer):
                st.committed = yield Prefill(st.prompt + st.answer, st.lm, reuse=(st.leaf, st.committed),
                                             compact=True)
        return self._result(st)

    def result_so_far(self, st: SearchState) -> GenerationResult:
        """The answer committed so far, as search would return it (for a search stopped early)."""
        return self._result(st)

    def _result(self, st: SearchState) -> GenerationResult:
        answer = self._truncate(st, st.answer, 0)
        stats = st.stats
        stats.forward_calls = st.lm.forward_calls + st.judge.forward_calls
        stats.tokens_fed = st.lm.tokens_fed + st.judge.tokens_fed
        stats.sampled_tokens = st.lm.sampled_tokens
        stats.judge_forward_calls, stats.judge_tokens_fed = st.judge.forward_calls, st.judge.tokens_fed
        stats.new_tokens = len(answer)
        stats.seconds = time.perf_counter() - st.started
        prompt = (prompt_text(self.tokenizer, st.question, self.cfg.prompt) if st.messages is None
                  else messages_text(self.tokenizer, list(st.messages), self.cfg.prompt))
        return GenerationResult(self.rules.text(self.tokenizer, answer), list(answer), prompt, stats, st.trace)

    def _trace_entry(self, st: SearchState, root: Node, chosen: Node) -> dict:
        """One committed step of the search trace (search.trace): the root's children, and the whole tree."""
        decode = self.tokenizer.decode

        def node(n: Node) -> dict:
            return {"segment": decode(list(n.tokens)), "token_ids": list(n.tokens), "visits": n.visits,
                    "real_visits": n.real_visits, "value": n.value, "prior": n.prior, "verdict": n.verdict,
                    "judged": n.judged, "committed": n is chosen, "children": [node(c) for c in n.children.values()]}

        iterations = st.stats.inner_iterations - sum(step["iterations"] for step in st.trace)
        return {"step": len(st.trace), "answer_before": self.rules.text(self.tokenizer, st.answer),
                "iterations": iterations, "committed": decode(list(chosen.tokens)),
                "children": [{"segment": decode(list(ch.tokens)), "visits": ch.visits, "real_visits": ch.real_visits,
                              "value": ch.value, "prior": ch.prior} for ch in root.children.values()],
                "tree": node(root)}

    # ------------------------------------------------------------------ stop rules
    def _room(self, st: SearchState, answer: tuple) -> int:
        """Tokens the answer may still grow by (length limit and max_new_tokens)."""
        return answer_limit(len(st.prompt), self.s) - len(answer)

    def _answer_done(self, st: SearchState, answer: tuple) -> bool:
        return self._room(st, answer) <= 0 or self.rules.finished(self.tokenizer, answer)

    def _leaf_done(self, st: SearchState, node: Node, leaf_answer: tuple) -> bool:
        """_answer_done for a leaf whose parent's answer is not done: only the leaf's segment is new."""
        return (self._room(st, leaf_answer) <= 0
                or self.rules.finished_tail(self.tokenizer, leaf_answer, len(node.tokens)))

    def _truncate(self, st: SearchState, answer: tuple, start: int) -> tuple:
        """Cut the answer just after its first stop token at or after `start`, and at the token limits."""
        for i in range(start, len(answer)):
            if answer[i] in self.rules.stop_ids:
                answer = answer[:i + 1]
                break
        return answer[:answer_limit(len(st.prompt), self.s)]

    def _rollout_done(self, st: SearchState, leaf_answer: tuple) -> Callable:
        earlier, tail = leaf_answer[:-TAIL], leaf_answer[-TAIL:]  # per token, only a window is rebuilt
        if self.s.rollout == "clause":
            return lambda new: self.rules.clause_ended(self.tokenizer, tail + tuple(new), before=st.prompt_end,
                                                       earlier=earlier)
        return lambda new: self.rules.finished_tail(self.tokenizer, tail + tuple(new), min(len(new), 1))

    # ------------------------------------------------------------------ inner loop
    def _iterate(self, st: SearchState, root: Node):
        """One inner iteration. -> (the root child it went through or None, that child's value before)."""
        node = yield from self._select(st, root)
        branch = _branch(node, root)
        outcome = yield from self._simulate(st, root, node, st.gen)
        self._finish(st, root, node, outcome)
        return branch

    def _step(self, st: SearchState, root: Node, k: int, counted: Callable):
        """Up to k inner iterations at once (search.leaves_per_step; not the paper's algorithm). Leaves are selected
        one after another, each whole (widening included) before the next, each path taking a virtual loss
        (tree.add_virtual_loss) so that selection looks elsewhere; selection stops early at a leaf already in
        flight. The iterations' requests then advance together (one tuple per round, sharing forward passes);
        when all are done the virtual losses are removed and the results expanded and backed up in selection
        order, `counted(branch, before)` after each. Each iteration draws from its own generator, seeded from
        st.gen at its selection, so its samples do not depend on how its requests interleave. -> iterations."""
        chosen: list = []
        for _ in range(k):
            node = yield from self._select(st, root)
            if any(node is other for other, _ in chosen):
                break
            add_virtual_loss(node, root)
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=st.gen))
            chosen.append((node, torch.Generator().manual_seed(seed)))
        try:
            outcomes = yield from _together([self._simulate(st, root, node, gen) for node, gen in chosen])
        finally:
            for node, _ in chosen:
                add_virtual_loss(node, root, -1)
        for (node, _), outcome in zip(chosen, outcomes):
            branch = _branch(node, root)
            self._finish(st, root, node, outcome)
            counted(*branch)
        return len(chosen)

    def _select(self, st: SearchState, root: Node):
        """Select a leaf, widening crowded bad nodes on the way down. -> the leaf."""
        node = root
        while node.children:
            yield from self._maybe_widen(st, node, root)
            node = select_child(node, c=self.s.c_puct, bounds=st.bounds, unvisited=self.s.unvisited_value)
        return node

    def _simulate(self, st: SearchState, root: Node, node: Node, gen: torch.Generator):
        """Prefill the leaf, expand it with the rollout riding along (draws from `gen`), evaluate.
        -> (leaf context, candidates, value, path embeddings, judged answer); the tree is not changed."""
        path = node.path_from(root)
        leaf_answer = st.answer + tuple(t for n in path for t in n.tokens)
        if node.terminal is None:
            node.terminal = self._leaf_done(st, node, leaf_answer) if path else self._answer_done(st, leaf_answer)
        # 2. simulate: roll out to the end of the clause (or to EOS), beside the expansion's candidate rows
        ctx, rollout, candidates = None, [], None
        if not node.terminal:
            room = self._room(st, leaf_answer)
            ctx = yield Prefill(st.prompt + leaf_answer, st.lm, reuse=(st.leaf, st.committed))
            st.leaf = ctx
            rollout_request = Rollout(room, self._rollout_done(st, leaf_answer), gen)
            length = self._segment_length(node.depth, room)
            if length == 1:  # the children come from the leaf's distribution: nothing to sample
                rollout = (yield Expand(ctx, st.lm, rollout=rollout_request)).rollout
            else:
                expansion = yield self._expand_request(st, ctx, length, self.s.sample_attempts, rollout_request,
                                                       gen=gen)
                rollout = expansion.rollout
                candidates = best_candidates(expansion.rows, self.s.num_candidates)
        # 3. self-evaluate the partial answer (and embed the path's texts in the same round)
        judged = self._truncate(st, leaf_answer + tuple(rollout), len(st.answer))
        value, embeddings = yield from self._evaluate(st, judged, self._path_texts(path, rollout))
        return ctx, candidates, value, embeddings, judged

    def _finish(self, st: SearchState, root: Node, node: Node, outcome: tuple) -> None:
        """Expand the leaf and back its value up, with the similarity update of siblings."""
        ctx, candidates, value, embeddings, judged = outcome
        if self.s.trace:
            node.verdict, node.judged = value, self.rules.text(self.tokenizer, judged)
        # 4. expand the leaf
        if not node.terminal:
            self._expand(node, ctx, candidates, is_root=node is root)
        # 5. back up, with the similarity update of siblings
        backup(node, root, value, embeddings, bounds=st.bounds, sim_threshold=self.s.similarity_threshold,
               sim_weight=self.s.similarity_weight)

    def _evaluate(self, st: SearchState, answer: tuple, texts: list):
        """(value of the judged answer, embeddings of the path texts); the judge and the embedder are asked in
        one round, for what their memos do not hold."""
        text = self.rules.text(self.tokenizer, answer)
        new_texts = list(dict.fromkeys(t for t in texts if t not in st.embedded))
        embed = Embed(new_texts) if new_texts else None
        requests, fresh = [], text not in st.memo  # decided now: an iteration running beside may fill the memo
        if not fresh:
            st.stats.judge_cache_hits += 1
            value = st.memo[text]
        elif self.judge is not None:
            requests.append(self.judge.request(st.question, text, counters=st.judge, reuse=(st.judged,)))
        else:
            value = float(self.evaluator(st.question, text))
        if embed:
            st.stats.embed_calls += 1
            requests.append(embed)
        results = (yield tuple(requests)) if requests else ()
        if embed:
            st.embedded.update(zip(new_texts, results[-1]))
        if fresh:
            if self.judge is not None:
                st.judged = results[0].context
                value = self.judge.verdict(results[0].probs).value
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"evaluator returned {value}, outside [-1, 1]")
            st.stats.judge_calls += 1
            st.memo[text] = value
        return value, [st.embedded[t] for t in texts]

    def _path_texts(self, path: list, rollout: list) -> list:
        """One text per path node: from the start of its segment to the end of the rollout."""
        texts, tail = [], tuple(rollout)
        for node in reversed(path):
            tail = node.tokens + tail
            texts.append(self.tokenizer.decode(list(tail), skip_special_tokens=True))
        return texts[::-1]

    # ------------------------------------------------------------------ expansion
    def _segment_length(self, depth: int, room: int) -> int:
        return max(1, min(self.s.segment_lengths[min(depth, len(self.s.segment_lengths) - 1)], room))

    def _expand(self, node: Node, ctx: Context, candidates: Optional[list], *, is_root: bool) -> None:
        mix = self.s.root_prior_mix if is_root else 0.0
        if candidates is None:
            # children: the top num_candidates at the sampling temperature; kept for widening: the ranking at T = 1
            probs, ids = topk_distribution(ctx.logits.unsqueeze(0), self.s.num_candidates, self.s.temperature)
            add_children(node, [((int(t),), float(p)) for t, p in zip(ids[0], probs[0])], uniform_mix=mix)
            probs, ids = topk_distribution(ctx.logits.unsqueeze(0), max(self.s.widen_max_children, 1))
            node.candidates = [((int(t),), float(p)) for t, p in zip(ids[0], probs[0])]
            return
        node.candidates = candidates
        add_children(node, candidates, uniform_mix=mix)

    def _expand_request(self, st: SearchState, ctx: Context, length: int, samples: int,
                        rollout: Optional[Rollout] = None, *, gen: Optional[torch.Generator] = None) -> Expand:
        """Candidate rows (greedy plus `samples` sampled) after ctx, with the rollout riding along. The rows'
        uniforms are drawn first, then the rollout draws one per token (RAIN_ALGORITHM.md's order is the
        reverse; docs/deviations.md)."""
        spec = SegmentSpec(length=length, topk=self.s.sample_topk, temperature=self.s.temperature, greedy=True,
                           stop_ids=self.rules.stop_ids)
        u = torch.rand(1 + samples, length, generator=st.gen if gen is None else gen)
        return Expand(ctx, st.lm, spec, u, rollout)

    def _maybe_widen(self, st: SearchState, node: Node, root: Node):
        """Dynamic widening: one more single-token child from the stored ranking, or fresh greedy + samples."""
        path = node.path_from(root)
        answer = st.answer + tuple(t for n in path for t in n.tokens)
        length = self._segment_length(node.depth, self._room(st, answer))
        if not needs_widening(node, segment_length=length, max_children=self.s.widen_max_children,
                              variance_scale=self.s.widen_variance):
            return
        mix = self.s.root_prior_mix if node is root else 0.0
        if length == 1:
            added = widen_with(node, node.candidates, uniform_mix=mix)
        else:
            ctx = yield Prefill(st.prompt + answer, st.lm, reuse=(st.leaf, st.committed))
            fresh = best_candidates((yield self._expand_request(st, ctx, length, self.s.widen_sample_attempts)).rows,
                                    keep=2)
            added = widen_with(node, fresh + node.candidates, uniform_mix=mix)
        st.stats.widenings += len(added)


def _branch(leaf: Node, root: Node) -> tuple:
    """(the root child on the way to `leaf`, or None at the root; its value now, else 0.0)."""
    path = leaf.path_from(root)
    return (path[0], path[0].value) if path else (None, 0.0)


def _together(gens: list):
    """Run sub-generators of requests in lockstep: each round yields ONE tuple with the current request(s) of
    every unfinished one (so their LM work shares forward passes) and hands each its own results back.
    -> their return values, in order."""
    out, current = [None] * len(gens), {}

    def advance(i, value):
        try:
            current[i] = gens[i].send(value)
        except StopIteration as stop:
            current.pop(i, None)
            out[i] = stop.value

    for i in range(len(gens)):
        advance(i, None)
    while current:
        order = sorted(current)
        parts = [(current[i], isinstance(current[i], tuple)) for i in order]
        results = yield tuple(item for request, many in parts for item in (request if many else (request,)))
        at = 0
        for i, (request, many) in zip(order, parts):
            n = len(request) if many else 1
            got = tuple(results[at:at + n])
            at += n
            advance(i, got if many else got[0])
    return out


# ---------------------------------------------------------------------------------------------- driver

class _Task:
    """A search in a slot of `drive`: its generator and what it waits for."""

    def __init__(self, key, gen):
        self.key, self.gen = key, gen
        self.waiting: list = []  # Jobs and Embeds
        self.single = True
        self.embedded: dict = {}  # id(Embed) -> embeddings


def drive(searcher, tasks, batch_size: int = 1) -> Iterator[tuple]:
    """Run search generators, up to `batch_size` at a time, serving their requests together: one engine
    forward per round for all LM work, and one embedder call for every search waiting on embeddings, run on
    a second thread beside the forwards (the searches it serves wait for it; the others go on; the next call
    starts when it ends and takes every Embed waiting then; an embedder must not share a tokenizer object
    with the searches, as the built-in one does not).
    `tasks` is an iterable of (key, generator), or a `queue.Queue` of them for a long-lived service (a free
    slot takes a queued task at the next round; an idle driver waits; a None item ends it). Yields
    (key, result) as each finishes (the exception if it raised). Only `searcher.engine` and
    `searcher.embedder` are used, so searchers of different configs sharing them run together."""
    engine, embedder = searcher.engine, searcher.embedder
    active: list = []
    pool: Optional[ThreadPoolExecutor] = None
    inflight = None  # (the embedder call running beside the forwards, the (task, Embed) pairs it serves)
    if isinstance(tasks, queue.Queue):
        def take():
            try:
                return tasks.get(block=not active)
            except queue.Empty:
                return _IDLE
    else:
        source = iter(tasks)

        def take():
            return next(source, None)

    def advance(task: _Task, value):
        """Run the generator until it waits on unfinished work; -> _PENDING, or its result."""
        while True:
            try:
                request = task.gen.send(value)
            except StopIteration as stop:
                return stop.value
            except Exception as err:  # noqa: BLE001 - handed to the caller with its key
                return err
            task.single = not isinstance(request, tuple)
            items = [request] if task.single else list(request)
            task.waiting = [item if isinstance(item, Embed) else engine.submit(item) for item in items]
            task.embedded = {}
            if not _ready(task):
                return _PENDING
            value = _results(task)

    def advance_ready() -> list:
        finished, still = [], []
        for task in active:
            out = advance(task, _results(task)) if _ready(task) else _PENDING
            (still.append(task) if out is _PENDING else finished.append((task.key, out)))
        active[:] = still
        return finished

    try:
        ended = False
        while True:
            while len(active) < batch_size and not ended:
                nxt = take()
                if nxt is _IDLE:
                    break
                if nxt is None:
                    ended = True
                    break
                task = _Task(*nxt)
                out = advance(task, None)
                if out is _PENDING:
                    active.append(task)
                else:
                    yield task.key, out
            if not active:
                if ended:
                    return
                continue
            if inflight is None:
                embeds = [(task, item) for task in active for item in task.waiting
                          if isinstance(item, Embed) and id(item) not in task.embedded]
                texts = [t for _, e in embeds for t in e.texts]
                if embeds and engine.jobs:  # beside the forwards of the searches that do not wait on it
                    pool = pool or ThreadPoolExecutor(1, thread_name_prefix="rain-embed")
                    inflight = (pool.submit(embedder.embed, texts), embeds)
                elif embeds:  # nothing else to do: at once
                    _hand_out(embeds, embedder.embed(texts))
            if engine.jobs:
                engine.step()
            if inflight is not None and (inflight[0].done() or not engine.jobs):
                _hand_out(inflight[1], inflight[0].result())
                inflight = None
            yield from advance_ready()
    finally:  # an error (a failed forward, a failing embedder) or an early close: no job is left queued
        engine.jobs = []
        if pool is not None:
            pool.shutdown(wait=True)


_PENDING = object()
_IDLE = object()


def _hand_out(embeds: list, vectors: torch.Tensor) -> None:
    """Give each (task, Embed) its rows of the round's embeddings."""
    at = 0
    for task, item in embeds:
        task.embedded[id(item)] = vectors[at:at + len(item.texts)]
        at += len(item.texts)


def _ready(task: _Task) -> bool:
    return all(id(item) in task.embedded if isinstance(item, Embed) else item.done for item in task.waiting)


def _results(task: _Task):
    out = [task.embedded[id(item)] if isinstance(item, Embed) else item.result for item in task.waiting]
    return out[0] if task.single else tuple(out)
