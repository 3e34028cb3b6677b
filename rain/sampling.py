"""Sampling as pure functions: top-k distributions, inverse-CDF picks with externally supplied uniforms.

Knows: how to turn next-token logits into a token, given a uniform random number (so every engine that
sees the same logits and the same uniforms draws the same tokens). Does not know: models or searches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


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


def pick_tokens(probs: torch.Tensor, ids: Optional[torch.Tensor], u: Optional[torch.Tensor]) -> tuple:
    """Pick one entry per row: argmax when u is None, else inverse-CDF with u. ids None: the columns are the
    token ids (a full softmax). -> (token ids [B], probs [B])."""
    col = torch.zeros(probs.shape[0], dtype=torch.long) if u is None else inverse_cdf(probs, u)
    rows = torch.arange(probs.shape[0])
    return (col if ids is None else ids[rows, col]), probs[rows, col]


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


def row_uniforms(u_col: torch.Tensor, spec: SegmentSpec) -> torch.Tensor:
    """Uniforms of all rows for one position; NaN marks the greedy row (argmax)."""
    if not spec.greedy:
        return u_col
    u_col = u_col.clone()
    u_col[0] = float("nan")
    return u_col


def pick_rows(probs, ids, u):
    """pick_tokens with per-row argmax where u is NaN."""
    greedy = torch.isnan(u)
    tok, p = pick_tokens(probs, ids, torch.where(greedy, torch.zeros_like(u), u))
    if greedy.any():
        g_tok, g_p = pick_tokens(probs, ids, None)
        tok, p = torch.where(greedy, g_tok, tok), torch.where(greedy, g_p, p)
    return tok, p


@dataclass(eq=False)
class Draw:
    """Tokens to draw, one per row of `logits` [n, V], with uniforms u [n] (NaN: argmax): from the top-k at
    `temperature` (candidate rows), or from the full softmax at T = 1 when topk is None (a rollout).
    `draw_all` fills `tokens` and `probs` (plain lists)."""

    logits: torch.Tensor
    u: torch.Tensor
    topk: Optional[int] = None
    temperature: float = 1.0
    tokens: list = field(default_factory=list)
    probs: list = field(default_factory=list)


def draw_all(draws: list) -> None:
    """Answer many Draws (e.g. of every job after one forward) with one computation per kind (topk, temperature)
    instead of one per Draw. Every row is computed as it would be alone (top-k, softmax, cumulative sum and
    search are row-wise), so the tokens do not depend on which Draws share the batch."""
    kinds: dict = {}
    for d in draws:
        kinds.setdefault((d.topk, d.temperature), []).append(d)
    for (k, temperature), group in kinds.items():
        logits = group[0].logits if len(group) == 1 else torch.cat([d.logits for d in group])
        u = group[0].u if len(group) == 1 else torch.cat([d.u for d in group])
        if k is None:
            probs, ids = torch.softmax(logits.float(), dim=-1), None
        else:
            probs, ids = topk_distribution(logits, k, temperature)
        tokens, picked = (t.tolist() for t in pick_rows(probs, ids, u))
        at = 0
        for d in group:
            n = d.u.shape[0]
            d.tokens, d.probs = tokens[at:at + n], picked[at:at + n]
            at += n
