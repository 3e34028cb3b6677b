"""An offline judge: a local Hugging Face causal LM behind the same `complete(messages)` interface.

Knows: how to turn chat messages into model input (the tokenizer's chat template, as Llama
Guard expects, or the plain concatenated text for completion-style judges such as the AllenAI
TruthfulQA truth/info judges), greedy generation of a short reply, and token counting.
Does not know prompts or verdict parsing (`prompts.py`) or caching (`verdicts.py`).

transformers and torch are imported only when a model is loaded, so scoring with an API
judge or refusal matching never pays for them. Calls are serialised by a lock: one model,
one generation at a time (use --concurrency 1 with a local judge; more brings nothing).
"""

from __future__ import annotations

import threading

from rain.judge.client import ChatReply, Usage
from rain.judge.config import JudgeError


class LocalChatBackend:
    """Greedy replies from a loaded model and tokenizer."""

    def __init__(self, *, model, tokenizer, name: str, max_new_tokens: int = 32, use_chat_template: bool = True):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.use_chat_template = use_chat_template
        self.usage = Usage()
        self._lock = threading.Lock()

    def prompt_text(self, messages: list[dict]) -> str:
        """The exact text fed to the model for `messages`."""
        if self.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(message["content"] for message in messages)

    def complete(self, messages: list[dict]) -> ChatReply:
        text = self.prompt_text(messages)
        templated = self.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        with self._lock:
            inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
            inputs = {name: tensor.to(self._device()) for name, tensor in inputs.items()}
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self._pad_id())
        prompt_len = inputs["input_ids"].shape[1]
        new_ids = output[0, prompt_len:]
        reply = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        self.usage.add(requests=1, tokens_in=int(prompt_len), tokens_out=int(new_ids.shape[0]))
        return ChatReply(text=reply, tokens_in=int(prompt_len), tokens_out=int(new_ids.shape[0]))

    def _device(self):
        return getattr(self.model, "device", "cpu")

    def _pad_id(self):
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else getattr(self.tokenizer, "eos_token_id", None)


def load_local_backend(path: str, *, use_chat_template: bool, max_new_tokens: int = 32,
                       device: str = "auto", dtype: str = "auto") -> LocalChatBackend:
    """Load a local HF model folder or hub id (hub ids need the model already downloaded or a network)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise JudgeError("a local judge needs torch and transformers: pip install torch transformers") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(torch, dtype))
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise JudgeError(f"cannot load local judge model {path!r} ({first}): pass a downloaded model "
                         f"folder to --local-model") from None
    model.to(_device(torch, device))
    model.eval()
    return LocalChatBackend(model=model, tokenizer=tokenizer, name=f"local:{path}",
                            max_new_tokens=max_new_tokens, use_chat_template=use_chat_template)


def _dtype(torch, name: str):
    if name == "auto":
        return "auto"
    try:
        return getattr(torch, name)
    except AttributeError:
        raise JudgeError(f"unknown --local-dtype {name!r}: use auto, float32, float16 or bfloat16") from None


def _device(torch, name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"
