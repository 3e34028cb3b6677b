"""The only module that touches the Hugging Face model: loading, KV caches, batched sampling, counters.

Knows: how to run a frozen causal LM forward over token contexts, cached or not, and how to
draw tokens from its distributions with externally supplied uniform random numbers (so the
cached and the reference engines consume randomness identically). Does not know: trees,
values, prompts or benchmarks.

Two engines share one interface:
- `CachedEngine`: prefix KV caches ("anchors": the committed text, the judge's fixed few-shot
  part) are computed once and extended, never recomputed; the candidates of an expansion run as
  one batch of rows over the shared cache; the option orders of one judgement run as one batch.
- `ReferenceEngine`: every distribution is a full forward pass from token 0, one sequence at a
  time (the cost structure of the official code). It is the correctness reference.

A KV snapshot is a tuple of (keys, values) per layer. transformers' DynamicLayer grows by
concatenation (new tensors) and crops by slicing, so a snapshot is never mutated by later use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = tuple  # tuple[tuple[Tensor, Tensor], ...] per layer, batch-first


@dataclass
class Counters:
    """Work done by the LM. `tokens_fed` counts token positions processed (rows x length)."""

    forward_calls: int = 0
    tokens_fed: int = 0
    sampled_tokens: int = 0

    def snapshot(self) -> "Counters":
        return dataclasses.replace(self)

    def minus(self, earlier: "Counters") -> "Counters":
        return Counters(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                           for f in dataclasses.fields(self)})


@dataclass
class State:
    """A token context with its next-token logits (float32, [V]) and, for the cached engine, its KV."""

    tokens: tuple
    logits: torch.Tensor
    kv: Optional[KV] = None


# ---------------------------------------------------------------------------------------------
# Pure functions (shared by both engines)

def common_prefix(a: tuple, b: tuple) -> int:
    """Length of the longest common prefix of two token tuples."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


def topk_distribution(logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple:
    """logits [B, V] -> (probs [B, k] sorted descending and renormalised, ids [B, k])."""
    values, ids = torch.topk(logits.float() / temperature, min(k, logits.shape[-1]), dim=-1)
    return torch.softmax(values, dim=-1), ids


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """probs [B, K] (rows sum to ~1), u [B] in [0, 1) -> column index [B] of the sampled entry."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    idx = torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def pick_tokens(probs: torch.Tensor, ids: torch.Tensor, u: Optional[torch.Tensor]) -> tuple:
    """Pick one entry per row: argmax when u is None, else inverse-CDF with u. -> (token ids [B], probs [B])."""
    col = torch.zeros(probs.shape[0], dtype=torch.long) if u is None else inverse_cdf(probs, u)
    rows = torch.arange(probs.shape[0])
    return ids[rows, col], probs[rows, col]


def sample_full(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Ancestral sample from the full softmax at temperature 1: logits [B, V], u [B] -> ids [B]."""
    return inverse_cdf(torch.softmax(logits.float(), dim=-1), u)


@dataclass(frozen=True)
class SegmentSpec:
    """How to draw candidate segments: rows of `length` tokens; row 0 greedy when `greedy`."""

    length: int
    topk: int
    temperature: float
    greedy: bool
    stop_ids: frozenset


# ---------------------------------------------------------------------------------------------
# Engines

class Engine:
    """Interface and shared plumbing; see the module docstring for the two implementations."""

    def __init__(self, model, *, pad_id: int = 0):
        self.model = model
        self.pad_id = pad_id
        self.counters = Counters()
        self.device = model.get_input_embeddings().weight.device

    # -- the one forward pass --
    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, kv: Optional[KV], keep: int = 1) -> tuple:
        """ids [B, T] on top of kv -> (float32 logits of the last `keep` positions [B, keep, V], new KV)."""
        out = self.model(input_ids=ids.to(self.device), cache=self._cache(kv), use_cache=True, logits_to_keep=keep)
        self.counters.forward_calls += 1
        self.counters.tokens_fed += ids.numel()
        new_kv = tuple((layer.keys, layer.values) for layer in out.cache.layers)
        return out.logits.float(), new_kv

    def _cache(self, kv: Optional[KV]) -> DynamicCache:
        """A DynamicCache over a snapshot. Plain layers take the tensors as they are (no copy); other layer
        types (sliding windows) are filled through the public constructor."""
        cache = DynamicCache(config=self.model.config)
        if kv is None:
            return cache
        if len(cache.layers) != len(kv) or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return DynamicCache(ddp_cache_data=kv, config=self.model.config)
        for layer, (k, v) in zip(cache.layers, kv):
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        return cache

    def _logits_of(self, tokens: tuple) -> torch.Tensor:
        """Next-token logits [V] after `tokens`, from scratch (no cache)."""
        logits, _ = self._forward(torch.tensor([tokens]), None)
        return logits[0, -1].cpu()

    # -- interface --
    def anchor(self, name: str, tokens) -> None:
        """Declare a prefix that later contexts will start with (the cached engine keeps its KV)."""

    def state(self, tokens, *, keep_as: Optional[str] = None) -> State:
        """The context's next-token state; `keep_as` names it as an anchor for later contexts to reuse."""
        raise NotImplementedError

    def extend(self, state: State, tokens) -> State:
        raise NotImplementedError

    def segments(self, state: State, spec: SegmentSpec, u: torch.Tensor) -> list:
        """Rows of candidate segments after `state`; u [R, length] uniforms (row 0 unused when greedy).
        -> list of (tokens tuple, probability) per row; a row ends early at a stop id (kept)."""
        raise NotImplementedError

    def decode(self, state: State, *, max_tokens: int, done: Callable, generator=None) -> list:
        """Continue `state` one token at a time: sampled (full softmax, T=1) with `generator`, else greedy.
        Stops when done(new_tokens) (also tested before the first token) or after max_tokens. -> new tokens."""
        raise NotImplementedError

    def last_probs(self, anchor, shared, tails: list) -> torch.Tensor:
        """Next-token probabilities [len(tails), V] after shared + tail_i for each i. `anchor` is a fixed
        prefix that many calls share (the judge's instruction and examples): the cached engine keeps it."""
        raise NotImplementedError


def _row_u(u_col: torch.Tensor, spec: SegmentSpec) -> torch.Tensor:
    """Uniforms of all rows for one position; NaN marks the greedy row (argmax)."""
    if not spec.greedy:
        return u_col
    u_col = u_col.clone()
    u_col[0] = float("nan")
    return u_col


def _pick_rows(probs, ids, u):
    """pick_tokens with per-row argmax where u is NaN."""
    greedy = torch.isnan(u)
    tok, p = pick_tokens(probs, ids, torch.where(greedy, torch.zeros_like(u), u))
    if greedy.any():
        g_tok, g_p = pick_tokens(probs, ids, None)
        tok, p = torch.where(greedy, g_tok, tok), torch.where(greedy, g_p, p)
    return tok, p


class CachedEngine(Engine):
    """Prefix KV caches, batched candidate rows, batched judge orders."""

    def __init__(self, model, *, pad_id: int = 0):
        super().__init__(model, pad_id=pad_id)
        self.anchors: dict = {}
        # Cropping a cache by slicing is exact for plain layers only (not for sliding windows).
        self.can_crop = all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
        self.anchor_builds: dict = {}  # name -> how many times that anchor was (re)computed

    def anchor(self, name: str, tokens) -> None:
        tokens = tuple(tokens)
        if name not in self.anchors or self.anchors[name].tokens != tokens:
            self.anchors[name] = self.state(tokens)
            self.anchor_builds[name] = self.anchor_builds.get(name, 0) + 1

    def state(self, tokens, *, keep_as: Optional[str] = None) -> State:
        """The context's state, reusing the anchor sharing the longest prefix (its KV cropped by slicing)."""
        tokens = tuple(tokens)
        best, shared = None, 0
        for a in self.anchors.values():
            n = common_prefix(a.tokens, tokens)
            if n > shared and (self.can_crop or n == len(a.tokens)):
                best, shared = a, n
        if best is not None and shared == len(tokens) == len(best.tokens):
            result = best
        elif best is None:
            logits, kv = self._forward(torch.tensor([tokens]), None)
            result = State(tokens, logits[0, -1].cpu(), kv)
        else:
            shared = min(shared, len(tokens) - 1)  # feed at least one token, for the logits
            base = State(tokens[:shared], best.logits, tuple((k[:, :, :shared], v[:, :, :shared]) for k, v in best.kv))
            result = self.extend(base, tokens[shared:])
        if keep_as:
            self.anchors[keep_as] = result
        return result

    def extend(self, state: State, tokens) -> State:
        tokens = tuple(tokens)
        if not tokens:
            return state
        logits, kv = self._forward(torch.tensor([tokens]), state.kv)
        return State(state.tokens + tokens, logits[0, -1].cpu(), kv)

    def segments(self, state: State, spec: SegmentSpec, u: torch.Tensor) -> list:
        rows = u.shape[0]
        tok, p = _pick_rows(*topk_distribution(state.logits.unsqueeze(0).expand(rows, -1), spec.topk,
                                               spec.temperature), _row_u(u[:, 0], spec))
        seqs, probs = [[t] for t in tok.tolist()], p.double()
        alive = torch.tensor([t not in spec.stop_ids for t in tok.tolist()])
        kv = tuple((k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in state.kv)
        for j in range(1, spec.length):
            if not alive.any():
                break
            logits, kv = self._forward(tok.unsqueeze(1), kv)
            self.counters.sampled_tokens += int(alive.sum())
            tok, p = _pick_rows(*topk_distribution(logits[:, -1].cpu(), spec.topk, spec.temperature),
                                _row_u(u[:, j], spec))
            for r in torch.nonzero(alive).flatten().tolist():
                seqs[r].append(int(tok[r]))
                probs[r] *= float(p[r])
                if int(tok[r]) in spec.stop_ids:
                    alive[r] = False
        return [(tuple(s), float(pr)) for s, pr in zip(seqs, probs)]

    def decode(self, state: State, *, max_tokens: int, done: Callable, generator=None) -> list:
        if done([]):
            return []
        new: list = []
        logits, kv = state.logits.unsqueeze(0), state.kv
        while len(new) < max_tokens:
            if generator is None:
                tok = int(logits[0].argmax())
            else:
                tok = int(sample_full(logits, torch.rand(1, generator=generator))[0])
            new.append(tok)
            self.counters.sampled_tokens += 1
            if done(new) or len(new) >= max_tokens:
                break
            out, kv = self._forward(torch.tensor([[tok]]), kv)
            logits = out[:, -1].cpu()
        return new

    def last_probs(self, anchor, shared, tails: list) -> torch.Tensor:
        self.anchor("judge", anchor)
        base = self.state(shared, keep_as="judge-last")
        lengths = [len(t) for t in tails]
        width = max(lengths)
        # Right padding needs no mask: a causal model's real positions never see later pads.
        ids = torch.tensor([list(t) + [self.pad_id] * (width - len(t)) for t in tails])
        kv = tuple((k.expand(len(tails), -1, -1, -1), v.expand(len(tails), -1, -1, -1)) for k, v in base.kv)
        logits, _ = self._forward(ids, kv, keep=width)
        rows = torch.arange(len(tails))
        return torch.softmax(logits[rows, torch.tensor(lengths) - 1].cpu(), dim=-1)


class ReferenceEngine(Engine):
    """Plain recompute: every distribution is one full forward from token 0, batch 1."""

    def state(self, tokens, *, keep_as: Optional[str] = None) -> State:
        tokens = tuple(tokens)
        return State(tokens, self._logits_of(tokens))

    def extend(self, state: State, tokens) -> State:
        return self.state(state.tokens + tuple(tokens))

    def segments(self, state: State, spec: SegmentSpec, u: torch.Tensor) -> list:
        out = []
        for r in range(u.shape[0]):
            seq, prob, logits = [], 1.0, state.logits
            for j in range(spec.length):
                probs, ids = topk_distribution(logits.unsqueeze(0), spec.topk, spec.temperature)
                greedy = spec.greedy and r == 0
                tok, p = pick_tokens(probs, ids, None if greedy else u[r:r + 1, j])
                seq.append(int(tok[0]))
                prob *= float(p[0])
                if seq[-1] in spec.stop_ids or j == spec.length - 1:
                    break
                self.counters.sampled_tokens += 1
                logits = self._logits_of(state.tokens + tuple(seq))
            out.append((tuple(seq), prob))
        return out

    def decode(self, state: State, *, max_tokens: int, done: Callable, generator=None) -> list:
        if done([]):
            return []
        new: list = []
        logits = state.logits
        while len(new) < max_tokens:
            if generator is None:
                tok = int(logits.argmax())
            else:
                tok = int(sample_full(logits.unsqueeze(0), torch.rand(1, generator=generator))[0])
            new.append(tok)
            self.counters.sampled_tokens += 1
            if done(new) or len(new) >= max_tokens:
                break
            logits = self._logits_of(state.tokens + tuple(new))
        return new

    def last_probs(self, anchor, shared, tails: list) -> torch.Tensor:
        return torch.stack([torch.softmax(self._logits_of(tuple(shared) + tuple(t)), dim=-1) for t in tails])


def make_engine(model, tokenizer, kind: str = "cached") -> Engine:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    cls = {"cached": CachedEngine, "reference": ReferenceEngine}[kind]
    return cls(model, pad_id=pad)
