"""The LM engines: the only code that runs the Hugging Face model for the search.

Knows: how to serve a search's requests (prefill a context, expand it into candidate rows with a
rollout riding along, judge a text under both option orders) with forward passes, and how to count
the work. Does not know: trees, values, prompts or benchmarks.

A search asks through requests (`Prefill`, `Expand`, `Judge`); the engine turns each into a job and
`step()` advances every active job by one forward pass. Two engines share this interface:
- `CachedEngine`: every job of every active search goes into ONE packed forward per step
  (`rain.attention`): prefixes are stored once as KV segments and reused by the longest common prefix;
  the candidate rows of an expansion, its rollout, both judge orders, and the searches that share
  the few-shot or judge prefix all read one stored copy.
- `ReferenceEngine`: every distribution is a full forward pass from token 0, one sequence at a time
  (the cost structure of the official code). It is the correctness reference.
Randomness comes from the requests (uniforms drawn by the search), so both engines draw the same tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .attention import Past, Row, Segment, check_supported, forward_rows, merge_segments
from .sampling import Draw, SegmentSpec, common_prefix, draw_all, pick_tokens, row_uniforms, sample_full, \
    topk_distribution


@dataclass
class Counters:
    """Work done for one search (or one judge): forward passes it took part in, token positions it fed,
    tokens it sampled."""

    forward_calls: int = 0
    tokens_fed: int = 0
    sampled_tokens: int = 0

    def snapshot(self) -> "Counters":
        return dataclasses.replace(self)

    def minus(self, earlier: "Counters") -> "Counters":
        return Counters(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                           for f in dataclasses.fields(self)})


@dataclass
class BatchCounters:
    """Physical work of an engine: forward passes, rows and token positions in them."""

    forwards: int = 0
    rows: int = 0
    tokens: int = 0


@dataclass(eq=False)
class Context:
    """A computed token prefix: its tokens, next-token logits (float32 [V] on CPU; None for judge contexts)
    and, for the cached engine, its stored KV chain."""

    tokens: tuple
    logits: Optional[torch.Tensor]
    segments: tuple = ()


# ------------------------------------------------------------------------------------------- requests

@dataclass
class Prefill:
    """The context of `tokens`, reusing the longest computed prefix among `reuse` (and the engine's shared
    heads). `compact`: store everything after the shared head as one segment (for long-lived contexts)."""

    tokens: tuple
    counters: Counters
    reuse: tuple = ()
    compact: bool = False


@dataclass
class Rollout:
    """Decode one row after the context: sampled from the full softmax at T = 1 with one uniform of
    `generator` per token (greedy when None), until done(new tokens) (also tested before the first) or
    max_tokens."""

    max_tokens: int
    done: Callable
    generator: Optional[torch.Generator]


@dataclass
class Expand:
    """Candidate segments after `context` (rows of `spec`, uniforms u [R, length]; none when spec is None)
    and a rollout riding in the same forwards. -> Expansion."""

    context: Context
    counters: Counters
    spec: Optional[SegmentSpec] = None
    u: Optional[torch.Tensor] = None
    rollout: Optional[Rollout] = None


@dataclass
class Expansion:
    rows: list
    """(tokens tuple, probability) per candidate row; a row ends early at a stop id (kept)."""
    rollout: list
    """The rollout's new tokens."""


@dataclass
class Judge:
    """Next-token probabilities after tokens + tail_i for each tail, reusing the longest computed prefix
    of `tokens` among `reuse` and the shared heads. -> JudgeResult."""

    tokens: tuple
    tails: list
    counters: Counters
    reuse: tuple = ()


@dataclass
class JudgeResult:
    probs: torch.Tensor
    """[len(tails), V] float32."""
    context: Context
    """The context of the shared tokens, to reuse for the next judgement."""


class Job:
    """A request in progress. `done` once `result` is set."""

    done: bool = False
    result = None

    def rows(self) -> list:
        return []

    def feed(self, logits: torch.Tensor, new: tuple, offset: int) -> list:
        """After a forward: this job's rows' logits ([wanting rows, V]), and the forward's packed new keys and
        values (per layer [KVH, T, D]) where this job's rows' tokens start at `offset`. -> the `Draw`s it needs;
        the engine answers those of all jobs together, then calls `drawn()`."""
        return []

    def drawn(self) -> None:
        """The Draws returned by `feed` are answered."""


class _Done(Job):
    def __init__(self, result):
        self.done, self.result = True, result


class Engine:
    """Interface: `submit` a request, `step` until its job is done; `run` does both for one request."""

    def __init__(self, model):
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        self.batches = BatchCounters()
        self.jobs: list = []
        self.heads: list = []

    def submit(self, request) -> Job:
        job = self._job(request)
        if not job.done:
            self.jobs.append(job)
        return job

    def step(self) -> None:
        """One forward pass over the rows of every active job."""

    def run(self, request):
        job = self.submit(request)
        while not job.done:
            self.step()
        return job.result

    def share(self, tokens) -> Context:
        """A fixed prompt head that many contexts start with (the few-shot prompt, the judge's instruction):
        computed once, stored once, reused by every later request. Counted in no search."""
        return Context(tuple(tokens), None)

    def _job(self, request) -> Job:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------- cached

def _crop_chain(segments: tuple, n: int) -> tuple:
    """The chain's first n tokens (views)."""
    out = []
    for seg in segments:
        if seg.start >= n:
            break
        out.append(seg.crop(min(seg.length, n - seg.start)))
    return tuple(out)


def _compact(segments: tuple, *, keep_first: bool) -> tuple:
    """Bound a chain: after its shared head, keep the first own segment (when keep_first) and merge the rest."""
    head = [s for s in segments if s.shared]
    own = [s for s in segments if not s.shared]
    kept = own[:1] if keep_first else []
    rest = own[len(kept):]
    return tuple(head + kept + ([merge_segments(rest)] if rest else []))


class _Prefix:
    """Where a new context starts: the longest computed prefix among the candidates (cropped by views)."""

    def __init__(self, tokens: tuple, candidates):
        best, shared = None, 0
        for ctx in candidates:
            if ctx is None or not ctx.segments:
                continue
            n = common_prefix(ctx.tokens, tokens)
            if n > shared:
                best, shared = ctx, n
        self.whole = best if best is not None and shared == len(tokens) == len(best.tokens) else None
        self.length = shared
        self.base = _crop_chain(best.segments, shared) if best is not None else ()


def _slice(new: tuple, offset: int, n: int) -> tuple:
    """(keys, values) per layer of n packed new tokens from `offset` (views)."""
    return [k[:, offset:offset + n] for k in new[0]], [v[:, offset:offset + n] for v in new[1]]


def _own_segment(new: tuple, offset: int, start: int, tokens: tuple) -> Segment:
    """A stored segment of a row's new tokens, copied out of the packed forward's tensors."""
    keys, values = _slice(new, offset, len(tokens))
    return Segment([k.clone() for k in keys], [v.clone() for v in values], start, tuple(tokens))


class _PrefillJob(Job):
    def __init__(self, engine: "CachedEngine", request: Prefill):
        self.request = request
        start = _Prefix(request.tokens, list(request.reuse) + engine.heads)
        if start.whole is not None and start.whole.logits is not None and not request.compact:
            self.done, self.result = True, start.whole
            return
        n = min(start.length, len(request.tokens) - 1)  # feed at least one token, for the logits
        self.base = _crop_chain(start.base, n)
        self.new_tokens = request.tokens[n:]

    def rows(self) -> list:
        return [Row(base=self.base, tokens=list(self.new_tokens))]

    def feed(self, logits: torch.Tensor, new: tuple, offset: int) -> list:
        self.request.counters.forward_calls += 1
        self.request.counters.tokens_fed += len(self.new_tokens)
        start = self.base[-1].end if self.base else 0
        chain = _compact(self.base + (_own_segment(new, offset, start, self.new_tokens),),
                         keep_first=not self.request.compact)
        self.done, self.result = True, Context(self.request.tokens, logits[0].clone(), chain)  # not the step's
        return []


class _ExpandJob(Job):
    """Candidate rows and the rollout row advance together, one token per forward each; their own earlier
    tokens' KV is one packed `Past` for the whole job (row ids 0..R-1, the rollout R). Their tokens are drawn
    through `Draw`s, which the engine answers for all jobs of a step at once."""

    def __init__(self, engine: "CachedEngine", request: Expand):
        self.request = request
        ctx, spec, rollout = request.context, request.spec, request.rollout
        rows = request.u.shape[0] if spec is not None else 0
        self.seqs, self.probs, self.alive = [[] for _ in range(rows)], [1.0] * rows, [True] * rows
        self.past: Optional[Past] = None
        self.rollout: list = []
        self.rolling = rollout is not None and not rollout.done([])
        self.greedy_rollout: Optional[int] = None  # the rollout's next token when it decodes greedily
        self.draws = self._draws(ctx.logits.unsqueeze(0).expand(rows, -1), ctx.logits.unsqueeze(0))
        draw_all(self.draws)
        self.drawn(count_rows=False)  # the rows' first tokens are not counted, as ReferenceEngine counts

    def _fed(self) -> list:
        """Row ids fed in the next forward: the live candidate rows, then the rollout."""
        return [r for r, alive in enumerate(self.alive) if alive] + ([len(self.seqs)] if self.rolling else [])

    def rows(self) -> list:
        base, rows = self.request.context.segments, []
        for r in self._fed():
            seq = self.seqs[r] if r < len(self.seqs) else self.rollout
            rows.append(Row(base=base, tokens=[seq[-1]], past=self.past, past_id=r, past_len=len(seq) - 1))
        return rows

    def _draws(self, row_logits: torch.Tensor, rollout_logits: torch.Tensor) -> list:
        """The next tokens to draw: one per live candidate row (logits [live, V]) and the rollout's ([1, V])."""
        spec, live = self.request.spec, [r for r, alive in enumerate(self.alive) if alive]
        draws = []
        if live:
            u = row_uniforms(self.request.u[:, len(self.seqs[live[0]])], spec)[live]
            draws.append(Draw(row_logits[:len(live)], u, spec.topk, spec.temperature))
        self.greedy_rollout = None
        if self.rolling:
            generator = self.request.rollout.generator
            if generator is None:
                self.greedy_rollout = int(rollout_logits[0].argmax())
            else:
                draws.append(Draw(rollout_logits, torch.rand(1, generator=generator)))
        return draws

    def feed(self, logits: torch.Tensor, new: tuple, offset: int) -> list:
        counters = self.request.counters
        fed = self._fed()
        counters.forward_calls += 1
        counters.tokens_fed += len(fed)
        keys, values = _slice(new, offset, len(fed))
        self.past = Past(keys, values, fed) if self.past is None else self.past.extend(keys, values, fed)
        self.draws = self._draws(logits, logits[-1:])
        return self.draws

    def drawn(self, count_rows: bool = True) -> None:
        spec, counters, draws = self.request.spec, self.request.counters, iter(self.draws)
        live = [r for r, alive in enumerate(self.alive) if alive]
        if live:
            draw = next(draws)
            if count_rows:
                counters.sampled_tokens += len(live)
            for r, t, p in zip(live, draw.tokens, draw.probs):
                self.seqs[r].append(t)
                self.probs[r] *= p
                self.alive[r] = t not in spec.stop_ids and len(self.seqs[r]) < spec.length
        if self.rolling:
            self.rollout.append(self.greedy_rollout if self.greedy_rollout is not None else next(draws).tokens[0])
            counters.sampled_tokens += 1
            rollout = self.request.rollout
            if rollout.done(self.rollout) or len(self.rollout) >= rollout.max_tokens:
                self.rolling = False
        self.draws = []
        if not self.rolling and not any(self.alive):
            self.done = True
            self.result = Expansion([(tuple(s), p) for s, p in zip(self.seqs, self.probs)], self.rollout)


class _JudgeJob(Job):
    def __init__(self, engine: "CachedEngine", request: Judge):
        self.request = request
        start = _Prefix(request.tokens, list(request.reuse) + engine.heads)
        self.base = start.base
        self.shared_new = request.tokens[start.length:]

    def rows(self) -> list:
        tails = [list(t) for t in self.request.tails]
        if not self.shared_new:
            return [Row(base=self.base, tokens=t) for t in tails]
        return [Row(base=self.base, tokens=list(self.shared_new), want_logits=False)] + \
            [Row(base=self.base, tokens=t, parent=0) for t in tails]

    def feed(self, logits: torch.Tensor, new: tuple, offset: int) -> list:
        counters = self.request.counters
        counters.forward_calls += 1
        counters.tokens_fed += len(self.shared_new) + sum(len(t) for t in self.request.tails)
        chain = self.base
        if self.shared_new:
            start = self.base[-1].end if self.base else 0
            chain = _compact(chain + (_own_segment(new, offset, start, self.shared_new),), keep_first=True)
        probs = torch.softmax(logits, dim=-1)
        self.done, self.result = True, JudgeResult(probs, Context(self.request.tokens, None, chain))
        return []


class CachedEngine(Engine):
    """Every active job's rows in one packed forward per step, over prefixes stored once."""

    JOBS = {Prefill: _PrefillJob, Expand: _ExpandJob, Judge: _JudgeJob}

    def __init__(self, model, *, max_length: int = 2048):
        super().__init__(model)
        check_supported(model, max_length)

    def _job(self, request) -> Job:
        return self.JOBS[type(request)](self, request)

    def share(self, tokens) -> Context:
        tokens = tuple(tokens)
        for ctx in self.heads:
            if ctx.tokens == tokens:
                return ctx
        ctx = self.run(Prefill(tokens, Counters(), compact=True))
        for seg in ctx.segments:
            seg.shared = True
        self.heads.append(ctx)
        return ctx

    @torch.inference_mode()
    def step(self) -> None:
        jobs = [job for job in self.jobs if not job.done]
        plan = [(job, job.rows()) for job in jobs]
        rows = [row for _, job_rows in plan for row in job_rows]
        if not rows:
            self.jobs = []
            return
        # parent indices are local to a job: make them global
        offset, packed = 0, []
        for job, job_rows in plan:
            for row in job_rows:
                if row.parent is not None:
                    row.parent += offset
                packed.append(row)
            offset += len(job_rows)
        logits, new = forward_rows(self.model, packed)
        logits = logits.cpu()
        self.batches.forwards += 1
        self.batches.rows += len(packed)
        self.batches.tokens += sum(len(r.tokens) for r in packed)
        at, token_at, draws = 0, 0, []
        for job, job_rows in plan:
            wanting = sum(1 for r in job_rows if r.want_logits)
            draws += job.feed(logits[at:at + wanting], new, token_at)
            at += wanting
            token_at += sum(len(r.tokens) for r in job_rows)
        draw_all(draws)  # the tokens of every job, in one batch per kind
        for job in jobs:
            job.drawn()
        self.jobs = [job for job in jobs if not job.done]


# ------------------------------------------------------------------------------------------- reference

class ReferenceEngine(Engine):
    """Plain recompute: every distribution is one full forward from token 0, batch 1; jobs finish at submit."""

    def _logits_of(self, tokens: tuple, counters: Counters) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([tokens], device=self.device), use_cache=False, logits_to_keep=1)
        counters.forward_calls += 1
        counters.tokens_fed += len(tokens)
        self.batches.forwards += 1
        self.batches.rows += 1
        self.batches.tokens += len(tokens)
        return out.logits[0, -1].float().cpu()

    @torch.no_grad()
    def _job(self, request) -> Job:
        if isinstance(request, Prefill):
            return _Done(Context(request.tokens, self._logits_of(request.tokens, request.counters)))
        if isinstance(request, Judge):
            probs = torch.stack([torch.softmax(self._logits_of(request.tokens + tuple(t), request.counters), dim=-1)
                                 for t in request.tails])
            return _Done(JudgeResult(probs, Context(request.tokens, None)))
        rollout = self._decode(request) if request.rollout is not None else []
        rows = self._segments(request) if request.spec is not None else []
        return _Done(Expansion(rows, rollout))

    def _segments(self, request: Expand) -> list:
        ctx, spec, u, counters = request.context, request.spec, request.u, request.counters
        out = []
        for r in range(u.shape[0]):
            seq, prob, logits = [], 1.0, ctx.logits
            for j in range(spec.length):
                probs, ids = topk_distribution(logits.unsqueeze(0), spec.topk, spec.temperature)
                tok, p = pick_tokens(probs, ids, None if spec.greedy and r == 0 else u[r:r + 1, j])
                seq.append(int(tok[0]))
                prob *= float(p[0])
                if seq[-1] in spec.stop_ids or j == spec.length - 1:
                    break
                counters.sampled_tokens += 1
                logits = self._logits_of(ctx.tokens + tuple(seq), counters)
            out.append((tuple(seq), prob))
        return out

    def _decode(self, request: Expand) -> list:
        r, ctx, counters = request.rollout, request.context, request.counters
        if r.done([]):
            return []
        new: list = []
        logits = ctx.logits
        while len(new) < r.max_tokens:
            if r.generator is None:
                tok = int(logits.argmax())
            else:
                tok = int(sample_full(logits.unsqueeze(0), torch.rand(1, generator=r.generator))[0])
            new.append(tok)
            counters.sampled_tokens += 1
            if r.done(new) or len(new) >= r.max_tokens:
                break
            logits = self._logits_of(ctx.tokens + tuple(new), counters)
        return new


def make_engine(model, kind: str = "cached", *, max_length: int = 2048) -> Engine:
    if kind == "reference":
        return ReferenceEngine(model)
    if kind == "cached":
        return CachedEngine(model, max_length=max_length)
    raise ValueError(f"search.engine must be cached or reference, got {kind!r}")
