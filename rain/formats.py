"""Prompt formats and stop rules: how a bare question becomes the policy prompt, and where an answer ends.

Knows: the five prompt formats (few-shot dialogue for base models, the tokenizer's chat
template, Vicuna v1.1, Llama-2-chat, raw) for a bare question or an OpenAI-style conversation,
each format's turn marker, the stop token ids of a
tokenizer, and where prompt template files live. Does not know: models, search or benchmarks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from .config import JudgeConfig, PromptConfig

PROMPTS_DIR = Path(__file__).parent / "prompts"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
TURN_MARKERS = {"fewshot": "Human:", "vicuna": "USER:", "llama2chat": "[INST]", "chat": None, "raw": None}
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def prompt_path(name: str) -> Path:
    """A prompt file: the path as given if it exists, else a file of that name in rain/prompts/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    packaged = PROMPTS_DIR / name
    if packaged.is_file():
        return packaged
    raise FileNotFoundError(f"prompt file not found: {name!r} (looked at {path.resolve()} and {packaged})")


def read_prompt(name: str) -> str:
    """The file's text as Python's text mode reads it (as the official code does): universal newlines, so
    CRLF and CR line endings become "\\n"."""
    path = prompt_path(name)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"prompt file {path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ValueError(f"prompt file {path}: cannot be read: {err.strerror or err}") from None


OPTION_LABEL = re.compile(r"^[ \t]*\(([^()\s]+)\)", re.MULTILINE)
"""An option offered by an options block: a line starting with '(A)', '(B)', '(Yes)' ..."""


def offered_options(text: str) -> list:
    """The option labels an options block lists, in order ([] for a bare question such as 'Is it true?')."""
    return OPTION_LABEL.findall(text)


def check_judge_options(judge: JudgeConfig) -> None:
    """Every good/bad option must be one the options block offers (when it lists any): an option it does not
    offer can never be the model's choice, and every vote would come out the same. ValueError naming it."""
    for index, name in enumerate(judge.options_files):
        offered = offered_options(read_prompt(name))
        if not offered:
            continue
        for field, options in (("good_options", judge.good_options), ("bad_options", judge.bad_options)):
            if options[index] not in offered:
                raise ValueError(f"judge.{field}[{index}] is {options[index]!r}, but {name} offers only "
                                 f"{', '.join(offered)}: that option can never be chosen; use one of those")


def _chat(tokenizer, messages: list) -> str:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"format 'chat' needs a tokenizer with a chat template; {name!r} has none "
                         "(use prompt.format=fewshot, vicuna, llama2chat or raw)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_text(tokenizer, question: str, cfg: PromptConfig) -> str:
    """The full policy prompt for a bare question."""
    check_question(question)
    if cfg.format == "fewshot":
        return read_prompt(cfg.fewshot_file).rstrip() + f"\n\nHuman: {question}\nAssistant:"
    if cfg.format == "vicuna":
        return f"{cfg.system or VICUNA_SYSTEM} USER: {question} ASSISTANT:"
    if cfg.format == "llama2chat":
        return f"[INST] {question} [/INST]"
    if cfg.format == "chat":
        system = [{"role": "system", "content": cfg.system}] if cfg.system else []
        return _chat(tokenizer, system + [{"role": "user", "content": question}])
    return question


def prompt_ids(tokenizer, question: str, cfg: PromptConfig) -> list:
    """Token ids of the policy prompt (special tokens added once: by the template or by the tokenizer)."""
    return _ids(tokenizer, prompt_text(tokenizer, question, cfg), cfg)


def _ids(tokenizer, text: str, cfg: PromptConfig) -> list:
    return tokenizer(text, add_special_tokens=cfg.format != "chat")["input_ids"]


class UnsupportedMessages(ValueError):
    """A conversation the prompt format cannot express (several turns in a single-question format)."""


def messages_text(tokenizer, messages, cfg: PromptConfig) -> str:
    """The policy prompt for an OpenAI-style conversation: {"role": system | user | assistant, "content": str}
    dicts ending with a user turn. Format chat renders them all with the tokenizer's chat template (prompt.system
    first unless the conversation has a system turn); the other formats take one user turn (vicuna also one system
    turn, which replaces its system sentence), so a single user turn gives prompt_text of that question."""
    question = last_user_message(messages)
    if cfg.format == "chat":
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if cfg.system and not any(m["role"] == "system" for m in turns):
            turns.insert(0, {"role": "system", "content": cfg.system})
        return _chat(tokenizer, turns)
    system = [m["content"] for m in messages if m["role"] == "system"]
    if len(messages) - len(system) != 1 or (system and (cfg.format != "vicuna" or len(system) > 1)):
        takes = "one user message and at most one system message" if cfg.format == "vicuna" else "one user message"
        raise UnsupportedMessages(f"prompt format {cfg.format!r} takes {takes}, got roles "
                                  f"{[m['role'] for m in messages]} (a chat model config, prompt.format: chat, "
                                  "takes whole conversations)")
    if system:
        cfg = replace(cfg, system=system[0])
    return prompt_text(tokenizer, question, cfg)


def messages_ids(tokenizer, messages, cfg: PromptConfig) -> list:
    """Token ids of messages_text."""
    return _ids(tokenizer, messages_text(tokenizer, messages, cfg), cfg)


def last_user_message(messages) -> str:
    """The question of a conversation (what the self-evaluation judges an answer against): its last turn, which
    must be the user's. Checks the conversation's shape: a non-empty list of role/content dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise TypeError(f"messages[{i}] must have a role of system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise TypeError(f"messages[{i}].content must be a string")
    if messages[-1]["role"] != "user":
        raise UnsupportedMessages(f"the last message must be the user's, got {messages[-1]['role']!r}")
    check_question(messages[-1]["content"])
    return messages[-1]["content"]


def check_question(question) -> None:
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question is empty")


def stop_token_ids(tokenizer, model=None) -> frozenset:
    """EOS of the tokenizer and the model's generation config, plus known end-of-turn tokens in the vocabulary."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(ids)


TAIL = 24
"""Tokens decoded at the end of a growing answer for the stop checks of each new token (covers any turn marker)."""


@dataclass(frozen=True)
class AnswerRules:
    """Where an answer ends: stop tokens, the format's turn marker, clause ends for rollouts."""

    stop_ids: frozenset
    turn_marker: Optional[str]
    stop_chars: str

    def text(self, tokenizer, ids) -> str:
        """The answer text: special tokens dropped, cut before a new turn, stripped."""
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
        if self.turn_marker and self.turn_marker in text:
            text = text[:text.index(self.turn_marker)]
        return text.strip()

    def finished(self, tokenizer, ids) -> bool:
        """A stop token in the answer, or a new turn begun."""
        if any(t in self.stop_ids for t in ids):
            return True
        return bool(self.turn_marker) and self.turn_marker in tokenizer.decode(list(ids), skip_special_tokens=True)

    def finished_tail(self, tokenizer, ids, new: int) -> bool:
        """finished(ids) when ids[:-new] is known not to be: looks at the last `new` tokens and a short window."""
        if any(t in self.stop_ids for t in ids[len(ids) - new:]):
            return True
        return bool(self.turn_marker) and self.turn_marker in tokenizer.decode(list(ids[-(new + TAIL):]),
                                                                               skip_special_tokens=True)

    def clause_ended(self, tokenizer, ids, *, before: str = "", earlier: tuple = ()) -> bool:
        """The rollout stop of rollout=clause: the text (the answer, or `before` it while the answer is
        empty) ends with a clause character, or the answer is finished. Decodes only the last TAIL tokens
        (with the `earlier` ones before `ids` too when those decode to nothing), so a check costs the same at
        any answer length."""
        if ids and ids[-1] in self.stop_ids:
            return True
        text = tokenizer.decode(list(ids[-TAIL:]), skip_special_tokens=True)
        if not text and len(earlier) + len(ids) > TAIL:
            text = tokenizer.decode(list(earlier) + list(ids), skip_special_tokens=True)
        text = text or before
        if self.turn_marker and self.turn_marker in text:
            return True
        return bool(text) and text[-1] in self.stop_chars


def answer_rules(tokenizer, model, prompt: PromptConfig, stop_chars: str) -> AnswerRules:
    return AnswerRules(stop_token_ids(tokenizer, model), TURN_MARKERS[prompt.format], stop_chars)
