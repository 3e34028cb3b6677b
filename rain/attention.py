"""Shared-prefix attention: many rows attend to prefixes stored once, through transformers' AttentionInterface.

Knows: how one packed forward pass over several rows works when the rows continue stored prefixes.
Does not know: search, sampling, requests.

A stored prefix is a chain of `Segment`s (batch-free KV per layer, contiguous positions). A `Row` of a
forward continues a chain (`base`) with its own earlier KV (`past`, from previous forwards of a
multi-step request), then optionally after the new tokens of an earlier row of the same forward
(`parent`), and feeds new tokens. All rows' new tokens are packed into ONE sequence [1, T] (no
padding), with explicit position ids; the registered attention function computes, per layer,
  - one masked attention of every new token over the rows' private keys (pasts, short own segments of at
    most FOLD tokens, new tokens), and
  - for each other distinct stored segment, one attention of the tokens whose rows continue it over that
    segment's keys (a batch-1 tensor broadcast to all of them: the prefix is never copied per row),
and merges the parts exactly with their log-sum-exp. Scores and softmax are computed in float32.

This is the memory model of the official code (one copy of the context) with the batching of a
serving engine: the candidate rows of an expansion, the two judge orders and the searches sharing the
few-shot or judge prefix read one stored copy. Tested against the plain forward pass to 1e-5 in float32.
"""

from __future__ import annotations

import array
import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AttentionInterface

NAME = "rain_shared_prefix"


@dataclass(eq=False)
class Segment:
    """A stored run of `length` tokens at positions start..start+length-1: keys/values per layer, [KVH, length, D]."""

    keys: list
    values: list
    start: int
    tokens: tuple
    shared: bool = False
    """Shared by many contexts (a fixed prompt head): never merged into another segment."""

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def end(self) -> int:
        return self.start + self.length

    def crop(self, n: int) -> "Segment":
        """The first n tokens, as views (no copy)."""
        if n == self.length:
            return self
        return Segment([k[:, :n] for k in self.keys], [v[:, :n] for v in self.values], self.start, self.tokens[:n],
                       self.shared)


def merge_segments(segments: list) -> Segment:
    """One segment holding several consecutive ones (a copy of their KV)."""
    if len(segments) == 1:
        return segments[0]
    keys = [torch.cat([s.keys[i] for s in segments], dim=1) for i in range(len(segments[0].keys))]
    values = [torch.cat([s.values[i] for s in segments], dim=1) for i in range(len(segments[0].values))]
    return Segment(keys, values, segments[0].start, sum((s.tokens for s in segments), ()))


@dataclass(eq=False)
class Past:
    """The own KV of a multi-step request's rows (candidate rows, a rollout), packed: per layer [KVH, P, D];
    owners[k] (a LongTensor [P]) is the id of the row that key k belongs to. Grows by one concatenation per
    layer and step for the whole request, whatever its number of rows."""

    keys: list
    values: list
    owners: torch.Tensor

    def __post_init__(self):
        self.owners = _longs(self.owners) if isinstance(self.owners, list) else self.owners

    def extend(self, keys: list, values: list, owners) -> "Past":
        return Past([torch.cat([a, b], dim=1) for a, b in zip(self.keys, keys)],
                    [torch.cat([a, b], dim=1) for a, b in zip(self.values, values)],
                    torch.cat([self.owners, _longs(owners)]))


@dataclass(eq=False)
class Row:
    """One row of a packed forward: continue `base` (a chain of segments), then its own earlier tokens (the
    keys of `past` owned by `past_id`, `past_len` of them) or the new tokens of row `parent`, with new `tokens`."""

    base: tuple
    tokens: list
    past: Optional[Past] = None
    past_id: int = 0
    past_len: int = 0
    parent: Optional[int] = None
    """Index of an earlier row of the same forward whose new tokens come between `base` and this row's."""
    want_logits: bool = True

    @property
    def start(self) -> int:
        return self.base[-1].end if self.base else 0


@dataclass
class Plan:
    """Everything the attention function needs for one packed forward, built once for all layers."""

    groups: list
    """(segment, the packed tokens that attend to it: None for all of them, a slice when they are consecutive,
    else a LongTensor)."""
    pasts: list
    """The distinct `Past`s of the rows, in order."""
    folded: list
    """Short own segments (at most FOLD tokens, not shared heads), read through the private keys."""
    private_mask: torch.Tensor
    """[T, P + F + T] bool: which private keys (the pasts in order, the folded segments in order, then the new
    tokens) each new token sees."""
    new_keys: list = field(default_factory=list)
    new_values: list = field(default_factory=list)
    bias: Optional[torch.Tensor] = None
    """The private mask as an additive bias, repeated per query group (built at the first layer)."""


_TAG = 1 << 20  # row ids of one past stay below this
FOLD = 64
"""Own segments up to this many tokens join the private keys (one small copy per forward) instead of being
attended in place: one attention call for all of them rather than one each (a few tokens of a leaf path or a
judge tail cost more in calls than in copies). Longer segments and shared heads are never copied."""


def plan_forward(rows: list, device) -> tuple:
    """rows -> (input_ids [1, T], position_ids [1, T], logits indices [n_wanting], Plan)."""
    ids, positions, owner, starts, offsets = [], [], [], [], []
    for r, row in enumerate(rows):
        if row.parent is not None:
            start = starts[row.parent] + len(rows[row.parent].tokens)
        else:
            start = row.start + row.past_len
        starts.append(start)
        offsets.append(len(ids))
        ids.extend(row.tokens)
        positions.extend(range(start, start + len(row.tokens)))
        owner.extend([r] * len(row.tokens))
    owner_t, pos_t = _longs(owner), _longs(positions)
    # the new tokens: a token sees the earlier tokens of its own row and the rows it continues ('parent' links)
    causal = pos_t.unsqueeze(0) <= pos_t.unsqueeze(1)
    if any(row.parent is not None for row in rows):
        lineage = torch.eye(len(rows), dtype=torch.bool)
        for r, row in enumerate(rows):
            if row.parent is not None:
                lineage[r] |= lineage[row.parent]
        new_mask = lineage[owner_t][:, owner_t] & ((owner_t.unsqueeze(0) != owner_t.unsqueeze(1)) | causal)
    else:
        new_mask = (owner_t.unsqueeze(0) == owner_t.unsqueeze(1)) & causal
    # stored segments: each read by the tokens of every row whose chain holds it (children use their parent's)
    by_segment: dict = {}
    for r, row in enumerate(rows):
        for seg in row.base:
            by_segment.setdefault(id(seg), (seg, []))[1].append(r)
    folded, in_place = [], []
    for seg, members in by_segment.values():
        (folded if not seg.shared and seg.length <= FOLD else in_place).append((seg, members))
    # the other private keys, decided per row then spread to its tokens: the distinct pasts (a row sees the keys
    # it owns in its own past), then the folded segments (a row sees those of its chain)
    pasts, index, tags, row_tag = [], {}, [], []
    for row in rows:
        if row.past is None:
            row_tag.append(-1)
            continue
        if id(row.past) not in index:
            index[id(row.past)] = len(pasts)
            tags.append(row.past.owners + len(pasts) * _TAG)
            pasts.append(row.past)
        row_tag.append(index[id(row.past)] * _TAG + row.past_id)
    parts = []
    if pasts:
        parts.append(_longs(row_tag).unsqueeze(1) == torch.cat(tags).unsqueeze(0))
    if folded:
        reads = bytearray(len(rows) * len(folded))  # [row, folded segment]
        for f, (_, members) in enumerate(folded):
            for r in members:
                reads[r * len(folded) + f] = 1
        lengths = [seg.length for seg, _ in folded]
        parts.append(torch.frombuffer(reads, dtype=torch.bool).view(len(rows), len(folded)).repeat_interleave(
            _longs(lengths), dim=1, output_size=sum(lengths)))
    private_mask = torch.cat([torch.cat(parts, dim=1)[owner_t], new_mask], dim=1) if parts else new_mask
    groups = []
    for seg, members in in_place:
        if members == list(range(members[0], members[-1] + 1)):  # consecutive rows: consecutive tokens
            sel = slice(offsets[members[0]], offsets[members[-1]] + len(rows[members[-1]].tokens))
            groups.append((seg, None if sel.start == 0 and sel.stop == len(ids) else sel))
        else:
            idx = torch.nonzero(torch.isin(owner_t, _longs(members))).flatten()
            groups.append((seg, idx.to(device)))
    want = [offsets[r] + len(row.tokens) - 1 for r, row in enumerate(rows) if row.want_logits]
    plan = Plan(groups, pasts, [seg for seg, _ in folded], private_mask.to(device))
    return _longs(ids).unsqueeze(0).to(device), pos_t.unsqueeze(0).to(device), _longs(want).to(device), plan


def _longs(values: list) -> torch.Tensor:
    """A CPU LongTensor of a list of ints, through the buffer protocol (torch.tensor on a list costs ~0.4 us per
    element, which was a fifth of planning a forward)."""
    return torch.frombuffer(array.array("q", values), dtype=torch.long) if values else torch.zeros(0, dtype=torch.long)


_CPU_KERNEL = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(q, keys, values, scale, softcap, bias=None, mask=None):
    """q [KVH, G, n, D] over keys/values [KVH, S, D]; bias [G * n, S] additive (-inf: hidden) for the CPU kernel,
    mask [n, S] bool (True: visible) otherwise; both None for all visible.
    -> (out float32 [KVH, G, n, D], lse [KVH, G, n]). On CPU, PyTorch's fused attention kernel (it returns the
    log-sum-exp); elsewhere the same computation written out."""
    kv_heads, groups, n, dim = q.shape
    flat = q.reshape(kv_heads, groups * n, dim)
    if _CPU_KERNEL is not None and q.device.type == "cpu" and not softcap:
        out, lse = _CPU_KERNEL(flat[None], keys[None], values[None], 0.0, False, attn_mask=bias, scale=scale)
        return out.view(kv_heads, groups, n, dim).float(), lse.view(kv_heads, groups, n).float()
    scores = torch.bmm(flat, keys.transpose(1, 2)).float() * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.view(kv_heads, groups, n, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).to(values.dtype).view(kv_heads, groups * n, -1)
    return torch.bmm(probs, values).float().view(kv_heads, groups, n, dim), lse


def _tokens(x: torch.Tensor, sel) -> torch.Tensor:
    """The packed tokens `sel` of x (tokens on dim 2): all (None), a slice (a view) or an index tensor (a copy)."""
    if sel is None:
        return x
    return x[:, :, sel] if isinstance(sel, slice) else x.index_select(2, sel)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The AttentionInterface function: query [1, H, T, D], key/value [1, KVH, T, D] (this forward's new tokens,
    rotary already applied). -> ([1, T, H, D], None)."""
    plan: Plan = kwargs["rain_plan"]
    layer = module.layer_idx
    softcap = kwargs.get("softcap")
    _, heads, total, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    new_k, new_v = key[0], value[0]
    plan.new_keys.append(new_k)
    plan.new_values.append(new_v)
    own = plan.pasts + plan.folded
    keys = torch.cat([p.keys[layer] for p in own] + [new_k], dim=1) if own else new_k
    values = torch.cat([p.values[layer] for p in own] + [new_v], dim=1) if own else new_v
    if not plan.groups and not softcap:  # nothing to merge with: plain masked attention
        out = torch.nn.functional.scaled_dot_product_attention(
            query, keys[None], values[None], attn_mask=plan.private_mask, scale=scale, enable_gqa=groups > 1)
        return out.transpose(1, 2), None
    if plan.bias is None:
        plan.bias = torch.zeros(plan.private_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~plan.private_mask, float("-inf")).repeat(groups, 1)
    q = query[0].view(kv_heads, groups, total, dim)
    # the private keys give (out, lse) for every token; each stored segment then for the tokens that read it,
    # merged in exactly by log-sum-exp: out <- out + sigmoid(lse_seg - lse) (out_seg - out), lse <- logaddexp
    out, lse = _attend(q, keys, values, scale, softcap, plan.bias, plan.private_mask)
    for seg, sel in plan.groups:
        o2, l2 = _attend(_tokens(q, sel), seg.keys[layer], seg.values[layer], scale, softcap)
        o1, l1 = _tokens(out, sel), _tokens(lse, sel)
        o, l = torch.lerp(o1, o2, torch.sigmoid(l2 - l1).unsqueeze(-1)), torch.logaddexp(l1, l2)
        if sel is None:
            out, lse = o, l
        elif isinstance(sel, slice):
            out[:, :, sel], lse[:, :, sel] = o, l
        else:
            out.index_copy_(2, sel, o)
            lse.index_copy_(2, sel, l)
    return out.to(query.dtype).reshape(heads, total, dim).transpose(0, 1).unsqueeze(0), None


AttentionInterface.register(NAME, shared_prefix_attention)


@contextlib.contextmanager
def _implementation(model, name: str):
    """Run the model with attention implementation `name` for the duration (restored after)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def check_supported(model, max_length: int) -> None:
    """Refuse models whose attention this function does not reproduce: a sliding window shorter than the
    contexts the search builds."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    uses_window = window is not None and window < max_length and getattr(config, "use_sliding_window", True) is not False
    if uses_window:
        raise ValueError(f"search.engine=cached does not support sliding-window attention "
                         f"({type(model).__name__}, sliding_window={window}); use search.engine=reference")


@torch.inference_mode()
def forward_rows(model, rows: list) -> tuple:
    """One packed forward over `rows`. -> (float32 logits [n_wanting, V] of each wanting row's last token,
    the new tokens' keys and values per layer, packed [KVH, T, D] in row order)."""
    device = model.get_input_embeddings().weight.device
    ids, positions, want, plan = plan_forward(rows, device)
    with _implementation(model, NAME):
        out = model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=want, rain_plan=plan)
    return out.logits[0].float(), (plan.new_keys, plan.new_values)
