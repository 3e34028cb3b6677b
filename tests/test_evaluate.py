"""Self-evaluation: option tokens on two tokenizer styles, the judge prompt, votes and probabilities."""

import pytest
import torch

import rain
from rain.config import JudgeConfig
from rain.evaluate import SelfEvaluator, option_token_ids, render_conversation
from tiny import train_tokenizer

LEAD = "The answer is: ("


@pytest.mark.parametrize("style", ["byte", "sentencepiece"])
def test_option_letters_map_to_single_tokens(style):
    tok = train_tokenizer(style)
    for letter in ("A", "B"):
        ids = option_token_ids(tok, LEAD, letter)
        assert ids
        assert all(tok.decode([i]).strip() == letter for i in ids)
        # the plain form is what follows '(' in the tokenized prompt
        full = tok(LEAD + letter, add_special_tokens=False)["input_ids"]
        assert full[-1] in ids
    yes = option_token_ids(tok, "[/INST]", "Yes")
    assert all(tok.decode([i]).strip() == "Yes" for i in yes)


def test_multi_token_option_is_a_clear_error():
    tok = train_tokenizer("byte")
    with pytest.raises(ValueError, match="judge option 'Xyzzyq' is not a single token"):
        option_token_ids(tok, LEAD, "Xyzzyq")


def test_conversation_rendering():
    assert render_conversation(" Why? ", " Because. And", "dialogue") == "Human: Why?\nAssistant: Because. And"
    assert render_conversation("Why?", "It is. Maybe not", "qa") == "Q: Why?\nA: It is."
    assert render_conversation("Why?", "", "dialogue") == "Human: Why?\nAssistant:"


class FixedProbs:
    """A stand-in engine returning chosen next-token probabilities per option order."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def last_probs(self, anchor, shared, tails):
        self.calls.append((tuple(anchor), tuple(shared), [tuple(t) for t in tails]))
        return self.rows


def evaluator_with(tok, rows, **judge):
    return SelfEvaluator(FixedProbs(rows), tok, JudgeConfig(**judge))


def probs_for(tok, pairs):
    a, b = min(option_token_ids(tok, LEAD, "A")), min(option_token_ids(tok, LEAD, "B"))
    out = torch.zeros(len(pairs), len(tok))
    for row, (pa, pb) in enumerate(pairs):
        out[row, a], out[row, b] = pa, pb
    return out


def test_vote_needs_both_orders_to_agree():
    tok = train_tokenizer("byte")
    # order 1: A = harmless; order 2: B = harmless
    assert evaluator_with(tok, probs_for(tok, [(0.6, 0.1), (0.1, 0.6)]))("q", "a") == 1.0
    assert evaluator_with(tok, probs_for(tok, [(0.1, 0.6), (0.6, 0.1)]))("q", "a") == -1.0
    assert evaluator_with(tok, probs_for(tok, [(0.6, 0.1), (0.6, 0.1)]))("q", "a") == 0.0  # position bias


def test_probability_score_averages_both_orders():
    tok = train_tokenizer("byte")
    ev = evaluator_with(tok, probs_for(tok, [(0.6, 0.2), (0.3, 0.1)]), score="probability")
    verdict = ev.judge("q", "a")
    # order 1 (A = harmless): 0.6 / 0.8; order 2 (B = harmless): 0.1 / 0.4
    assert verdict.p_good == pytest.approx((0.75, 0.25))
    assert verdict.votes == (True, False)
    assert verdict.value == pytest.approx(0.0)
    ev = evaluator_with(tok, probs_for(tok, [(0.6, 0.2), (0.1, 0.9)]), score="probability")
    assert ev("q", "a") == pytest.approx(2 * (0.75 + 0.9) / 2 - 1)


def test_prompt_structure_and_shared_tokens():
    tok = train_tokenizer("byte")
    ev = evaluator_with(tok, probs_for(tok, [(0.5, 0.1), (0.1, 0.5)]))
    ev("How do I bake bread?", "Mix flour")
    anchor, shared, tails = ev.engine.calls[0]
    full = [tok.decode(list(shared + t)) for t in tails]
    assert full[0].endswith("Human: How do I bake bread?\nAssistant: Mix flour\nOptions:\n"
                            "(A) The assistant's reply is harmless.\n(B) The assistant's reply is harmful.\n"
                            "The answer is: (")
    assert "(A) The assistant's reply is harmful." in full[1]
    assert full[0].startswith(rain.formats.read_prompt("harm_instruction.txt")[:60])
    assert len(shared) > len(anchor) - 2  # the fixed part and the conversation are fed once for both orders
    whole = tok(full[0])["input_ids"]
    assert list(shared + tails[0]) == whole  # each order is tokenized as one text


def test_user_files_with_crlf_are_read_as_text_mode_reads_them(tmp_path):
    """As the official code reads f2/r1/r2 (text mode, universal newlines): the model sees no carriage return."""
    tok = train_tokenizer("byte")
    (tmp_path / "f2.txt").write_bytes(b"Judge it.\r\nExample one.\r\n")
    (tmp_path / "r1.txt").write_bytes(b"Options:\r\n(A) harmless\r\n(B) harmful\r\nThe answer is: (")
    (tmp_path / "r2.txt").write_bytes(b"Options:\r\n(A) harmful\r\n(B) harmless\r\nThe answer is: (")
    ev = evaluator_with(tok, probs_for(tok, [(0.5, 0.1), (0.1, 0.5)]), instruction_file=str(tmp_path / "f2.txt"),
                        options_files=[str(tmp_path / "r1.txt"), str(tmp_path / "r2.txt")])
    ev("q?", "a")
    anchor, shared, tails = ev.engine.calls[0]
    text = tok.decode(list(shared + tails[0]))
    assert text == "Judge it.\nExample one.\n\nHuman: q?\nAssistant: a\nOptions:\n(A) harmless\n(B) harmful\nThe answer is: ("


def test_chat_judge_wraps_in_the_template_and_opens_the_assistant_turn():
    tok = train_tokenizer("byte")
    ev = evaluator_with(tok, probs_for(tok, [(0.5, 0.1), (0.1, 0.5)]), format="chat")
    ev("q?", "a")
    anchor, shared, tails = ev.engine.calls[0]
    text = tok.decode(list(shared + tails[0]))
    assert text.startswith("<s>user\n")
    assert text.endswith("</s>\n<s>assistant\nThe answer is: (")


def test_chat_judge_without_template_is_an_error():
    tok = train_tokenizer("byte")
    tok.chat_template = None
    with pytest.raises(ValueError, match="judge.format=chat needs a tokenizer with a chat template"):
        evaluator_with(tok, None, format="chat")
