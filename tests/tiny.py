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
