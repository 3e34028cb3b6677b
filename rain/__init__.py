"""RAIN: Rewindable Auto-regressive INference (Li et al., ICLR 2024, arXiv 2309.07124).

A frozen causal LM searches a tree of answer segments, judges its own partial answers and
rewinds away from the ones it judges bad. Public API::

    model, tokenizer = rain.load_model("embedded")          # or a hub id, a folder, a .gguf file
    result = rain.rain_generate(model, tokenizer, "How do I pick a lock?", rain.RainConfig())
    result.text, result.token_ids, result.stats
"""

from .config import RainConfig, load_config
from .decoding import DECODERS, rain_generate, vanilla_generate
from .formats import prompt_ids, prompt_text
from .lm import load_model
from .search import GenerationResult, PromptTooLong, Stats

__version__ = "0.1.0"
__all__ = ["RainConfig", "load_config", "load_model", "rain_generate", "vanilla_generate", "DECODERS",
           "GenerationResult", "Stats", "PromptTooLong", "prompt_ids", "prompt_text", "__version__"]
