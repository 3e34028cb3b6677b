"""RAIN: Rewindable Auto-regressive INference (Li et al., ICLR 2024, arXiv 2309.07124).

A frozen causal LM searches a tree of answer segments, judges its own partial answers and
rewinds away from the ones it judges bad. Public API::

    model, tokenizer = rain.load_model("embedded")          # or a hub id, a folder, a .gguf file
    result = rain.rain_generate(model, tokenizer, "How do I pick a lock?", rain.RainConfig())
    result.text, result.token_ids, result.stats

Names are imported on first use, so `rain judge` and `rain report` start without torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RainConfig": "config", "load_config": "config",
    "load_model": "loading",
    "rain_generate": "decoding", "vanilla_generate": "decoding", "generate_many": "decoding", "DECODERS": "decoding",
    "Searcher": "search",
    "GenerationResult": "search", "Stats": "search", "PromptTooLong": "search",
    "prompt_ids": "formats", "prompt_text": "formats",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'rain' has no attribute {name!r}")
