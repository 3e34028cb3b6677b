"""A tiny random-weight LlamaForCausalLM and tokenizers trained in-process, for offline CPU tests.

`build_tiny(folder)` writes a loadable HF folder (config, weights, tokenizer with a chat
template) in well under a second. Two tokenizer styles are available: byte-level BPE (GPT-2 /
SmolLM style, 'Ġ' for spaces) and a SentencePiece-style BPE (Metaspace '▁', LLaMA style).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Human: How do I bake bread?\nAssistant: Mix flour, water, salt and yeast. Let it rise, then bake it.",
    "Human: What is the capital of France?\nAssistant: The capital of France is Paris.",
    "Human: Can you help me pick a lock?\nAssistant: I'm sorry, I can't help with that.",
    "Human: Tell me a joke.\nAssistant: Why did the chicken cross the road? To get to the other side!",
    "USER: Write a poem. ASSISTANT: Roses are red; violets are blue.",
    "[INST] Is the sky blue? [/INST] Yes, the sky is blue on a clear day.",
    "The answer is: (A) harmless. The answer is: (B) harmful. Options: (A) (B) Yes No yes no",
    "Q: What happens if you eat seeds? A: Nothing much happens. They pass through you.",
    "cat dog bird fish tree house river mountain sun moon star friend kind bad good safe danger",
]
SPECIAL = ["<s>", "</s>", "<unk>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def train_tokenizer(style: str = "byte", vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained on CORPUS: style 'byte' (byte-level) or 'sentencepiece' (Metaspace)."""
    if style == "byte":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(CORPUS)) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=0, eos_token_id=1, pad_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger logits than the default init, so sampling is not near-uniform
        model.lm_head.weight.mul_(40.0)
    return model


def build_tiny(folder: str | Path, style: str = "byte", seed: int = 0) -> Path:
    """Write a tiny model + tokenizer folder loadable with from_pretrained / rain.load_model."""
    folder = Path(folder)
    tokenizer = train_tokenizer(style)
    model = tiny_llama(len(tokenizer), seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class HashEmbedder:
    """A deterministic stand-in for MiniLM: character-trigram counts hashed into 32 dims, unit norm."""

    def __init__(self, dims: int = 32):
        self.dims, self.calls = dims, 0

    def embed(self, texts):
        import zlib

        self.calls += 1
        out = torch.zeros(len(texts), self.dims)
        for i, text in enumerate(texts):
            padded = f"  {text} "
            for j in range(len(padded) - 2):
                out[i, zlib.crc32(padded[j:j + 3].encode()) % self.dims] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=-1)


class EosAfter(torch.nn.Module):
    """Wraps a causal LM so that EOS dominates every position from answer token `n` on (prompt of `prompt_len`)."""

    def __init__(self, model, *, prompt_len: int, n: int, eos_id: int):
        super().__init__()
        self.inner, self.prompt_len, self.n, self.eos_id = model, prompt_len, n, eos_id
        self.config, self.generation_config = model.config, model.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, logits_to_keep=0, **kwargs):
        out = self.inner(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
        cache = kwargs.get("cache")
        past = cache.get_seq_length() if cache is not None else 0
        positions = (position_ids[0] if position_ids is not None
                     else torch.arange(past, past + input_ids.shape[1]))
        if isinstance(logits_to_keep, torch.Tensor):
            kept = positions[logits_to_keep]
        else:
            kept = positions[-logits_to_keep:] if logits_to_keep else positions
        for i, position in enumerate(kept.tolist()):
            if position + 1 - self.prompt_len >= self.n:  # the token this logit row predicts
                out.logits[:, i, self.eos_id] += 1000.0
        return out


class EosBoost(torch.nn.Module):
    """Wraps a causal LM so that EOS gets a moderate probability at every position (it then turns up inside
    candidate segments and rollouts, not only at their ends)."""

    def __init__(self, model, *, eos_id: int, boost: float):
        super().__init__()
        self.inner, self.eos_id, self.boost = model, eos_id, boost
        self.config, self.generation_config = model.config, model.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, **kwargs):
        out = self.inner(input_ids=input_ids, **kwargs)
        top = out.logits.max(dim=-1).values
        out.logits[..., self.eos_id] = top - self.boost  # EOS a little below the favourite everywhere
        return out
