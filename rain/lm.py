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

from .attention import Row, Segment, check_supported, forward_rows, merge_segments
from .sampling import SegmentSpec, common_prefix, pick_rows, pick_tokens, row_uniforms, sample_full, \
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

    def feed(self, logits: list, new: list) -> None:
        """This job's rows' logits (one [V] per wanting row) and new KV, after a forward."""


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


def _own_segment(new: tuple, start: int, tokens: tuple) -> Segment:
    """A stored segment from a row's new KV (copied out of the packed forward's tensors)."""
    keys, values = new
    return Segment([k.clone() for k in keys], [v.clone() for v in values], start, tuple(tokens))


def _append_past(past: Optional[tuple], new: tuple) -> tuple:
    if past is None:
        return new
    return ([torch.cat([a, b], dim=1) for a, b in zip(past[0], new[0])],
            [torch.cat([a, b], dim=1) for a, b in zip(past[1], new[1])])


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

    def feed(self, logits: list, new: list) -> None:
        self.request.counters.forward_calls += 1
        self.request.counters.tokens_fed += len(self.new_tokens)
        start = self.base[-1].end if self.base else 0
        chain = _compact(self.base + (_own_segment(new[0], start, self.new_tokens),),
                         keep_first=not self.request.compact)
        self.done, self.result = True, Context(self.request.tokens, logits[0], chain)


class _ExpandJob(Job):
    """Candidate rows and the rollout row advance together, one token per forward each."""

    def __init__(self, engine: "CachedEngine", request: Expand):
        self.request = request
        ctx, spec, rollout = request.context, request.spec, request.rollout
        self.seqs, self.probs, self.alive, self.pasts = [], [], [], []
        if spec is not None:
            tok, p = pick_rows(*topk_distribution(ctx.logits.unsqueeze(0).expand(request.u.shape[0], -1), spec.topk,
                                                  spec.temperature), row_uniforms(request.u[:, 0], spec))
            self.seqs = [[t] for t in tok.tolist()]
            self.probs = p.double().tolist()
            self.alive = [s[0] not in spec.stop_ids and spec.length > 1 for s in self.seqs]
            self.pasts = [None] * len(self.seqs)
        self.rollout: list = []
        self.rollout_past = None
        self.rolling = rollout is not None and not rollout.done([])
        if self.rolling:
            self._rollout_pick(ctx.logits)
        self._finish_if_done()

    def _rollout_pick(self, logits: torch.Tensor) -> None:
        r = self.request.rollout
        if r.generator is None:
            tok = int(logits.argmax())
        else:
            tok = int(sample_full(logits.unsqueeze(0), torch.rand(1, generator=r.generator))[0])
        self.rollout.append(tok)
        self.request.counters.sampled_tokens += 1
        if r.done(self.rollout) or len(self.rollout) >= r.max_tokens:
            self.rolling = False

    def _finish_if_done(self) -> None:
        if not self.rolling and not any(self.alive):
            self.done = True
            self.result = Expansion([(tuple(s), p) for s, p in zip(self.seqs, self.probs)], self.rollout)

    def rows(self) -> list:
        base = self.request.context.segments
        rows = [Row(base=base, tokens=[s[-1]], past=past, past_len=len(s) - 1)
                for s, past, alive in zip(self.seqs, self.pasts, self.alive) if alive]
        if self.rolling:
            rows.append(Row(base=base, tokens=[self.rollout[-1]], past=self.rollout_past,
                            past_len=len(self.rollout) - 1))
        return rows

    def feed(self, logits: list, new: list) -> None:
        counters, spec = self.request.counters, self.request.spec
        counters.forward_calls += 1
        counters.tokens_fed += len(logits)
        live = [r for r, alive in enumerate(self.alive) if alive]
        if live:
            j = len(self.seqs[live[0]])
            counters.sampled_tokens += len(live)
            u = row_uniforms(self.request.u[:, j], spec)[live]
            tok, p = pick_rows(*topk_distribution(torch.stack(logits[:len(live)]), spec.topk, spec.temperature),
                               u)
            for i, r in enumerate(live):
                t = int(tok[i])
                self.seqs[r].append(t)
                self.probs[r] *= float(p[i])
                self.pasts[r] = _append_past(self.pasts[r], new[i])
                self.alive[r] = t not in spec.stop_ids and j + 1 < spec.length
        if self.rolling:
            self.rollout_past = _append_past(self.rollout_past, new[-1])
            self._rollout_pick(logits[-1])
        self._finish_if_done()


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

    def feed(self, logits: list, new: list) -> None:
        counters = self.request.counters
        counters.forward_calls += 1
        counters.tokens_fed += len(self.shared_new) + sum(len(t) for t in self.request.tails)
        chain = self.base
        if self.shared_new:
            start = self.base[-1].end if self.base else 0
            chain = _compact(chain + (_own_segment(new[0], start, self.shared_new),), keep_first=True)
        probs = torch.softmax(torch.stack(logits), dim=-1)
        self.done, self.result = True, JudgeResult(probs, Context(self.request.tokens, None, chain))


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
        at, row_at = 0, 0
        for job, job_rows in plan:
            wanting = sum(1 for r in job_rows if r.want_logits)
            job.feed(list(logits[at:at + wanting]), new[row_at:row_at + len(job_rows)])
            at += wanting
            row_at += len(job_rows)
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
