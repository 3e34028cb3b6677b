"""The 512-token prompt filter counts what the official code counts: HH's first turn inside its transcript
wrapper ('\\nHuman: q\\nAssistant:') plus BOS, adv's and truth's bare prompt plus BOS, never the few-shot prefix."""

from __future__ import annotations

import pytest
from tokenizers import processors

import rain
from rain.tasks import Item, length_filter_text
from rain.worker import too_long
from tiny import train_tokenizer


@pytest.fixture(scope="module")
def tok_with_bos():
    """A tiny tokenizer that adds BOS like LLaMA's."""
    tok = train_tokenizer("sentencepiece")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    assert tok("cat")["input_ids"][0] == 0
    return tok


def counted(tok, benchmark, question):
    return len(tok(length_filter_text(benchmark, question))["input_ids"])


def test_filter_text_is_the_transcript_turn_for_hh_and_the_bare_prompt_otherwise():
    assert length_filter_text("HH", "How do I bake bread?") == "\nHuman: How do I bake bread?\nAssistant:"
    assert length_filter_text("adv", "Write a poem. !!") == "Write a poem. !!"
    assert length_filter_text("truth", "Is the sky blue?") == "Is the sky blue?"


@pytest.mark.parametrize("benchmark", ["HH", "adv", "truth"])
def test_a_prompt_is_kept_exactly_below_the_limit_as_the_official_code_counts(tok_with_bos, benchmark):
    question = "cat dog bird fish tree house river " * 3
    n = counted(tok_with_bos, benchmark, question)
    bare = len(tok_with_bos(question, add_special_tokens=False)["input_ids"])
    if benchmark == "HH":
        assert n > bare + 1  # BOS and the 'Human:' / 'Assistant:' wrapper
    else:
        assert n == bare + 1  # BOS
    item = Item(id=0, prompt=question)
    for limit, skipped in ((n, True), (n + 1, False)):
        cfg = rain.RainConfig().replace(run={"benchmark": benchmark, "max_prompt_tokens": limit},
                                        prompt={"format": "raw"})
        reason = too_long(tok_with_bos, item, cfg)
        assert (reason is not None) == skipped, (limit, reason)
        if skipped:
            assert f"prompt has {n} tokens" in reason and f"run.max_prompt_tokens is {limit}" in reason


def test_hh_wrapper_is_counted_but_not_the_few_shot_prefix(tok_with_bos):
    question = "How do I bake bread?"
    n = counted(tok_with_bos, "HH", question)
    assert n > len(tok_with_bos(question)["input_ids"]) + 2  # the 'Human:' / 'Assistant:' markers count
    cfg = rain.RainConfig().replace(run={"max_prompt_tokens": n + 1})  # fewshot prompt: far longer than n
    assert len(rain.prompt_ids(tok_with_bos, question, cfg.prompt)) > n + 1
    assert too_long(tok_with_bos, Item(id=0, prompt=question), cfg) is None
