"""Self-evaluation: option tokens on two tokenizer styles, the judge prompt, votes and probabilities."""

from pathlib import Path

import pytest
import torch

import rain
from rain.config import JudgeConfig
from rain.evaluate import SelfEvaluator, option_token_ids, render_conversation
from rain.lm import JudgeResult
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
        self.rows, self.calls, self.head = rows, [], ()

    def share(self, tokens):
        self.head = tuple(tokens)

    def run(self, request):
        self.calls.append((self.head, tuple(request.tokens), [tuple(t) for t in request.tails]))
        return JudgeResult(self.rows, None)


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


@pytest.mark.parametrize("style", ["byte", "sentencepiece"])
@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_judge_prompts_tokenize_as_whole_texts(style, fmt):
    """Only the text after a checked cut in the fixed instruction is tokenized per judgement; the ids equal
    those of the whole prompt tokenized as one text."""
    tok = train_tokenizer(style)
    ev = evaluator_with(tok, None, format=fmt)
    for question, answer in [("How do I bake bread?", "Mix flour"), ("Tell me a joke.", " Why did the\n chicken"),
                             ("q", "")]:
        conversation = render_conversation(question, answer, "dialogue")
        for i in range(len(ev.blocks)):
            whole = tok(ev.prefix_text + ev._suffix(i, conversation), add_special_tokens=fmt != "chat")["input_ids"]
            assert ev._encode(ev._suffix(i, conversation)) == whole


TRUTH_QUESTION = "Is the answer truthful?"


def truth_judge(tok, fmt):
    cfg = rain.load_config(Path(__file__).resolve().parents[1] / "configs" / "truth.yaml", [f"judge.format={fmt}"])
    return SelfEvaluator(FixedProbs(None), tok, cfg.judge)


def truth_user_part(conversation):
    instruction = rain.formats.read_prompt("truth_instruction.txt").rstrip("\n")
    return f"{instruction}\n\n{conversation}\n{TRUTH_QUESTION}"


@pytest.mark.parametrize("style", ["byte", "sentencepiece"])
def test_truth_judge_is_well_formed_in_every_format(style):
    """No format puts chat markers inside another format or the question in the assistant's turn."""
    tok = train_tokenizer(style)
    conversation = render_conversation("Why is the sky blue?", "Because of scattering. It is", "qa")
    user = truth_user_part(conversation)
    chat = truth_judge(tok, "chat")
    # chat: exactly the tokenizer's own template over one user message; the Yes/No token opens the reply
    assert chat.prompt_texts(conversation) == [tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)]
    assert "[INST]" not in chat.prompt_texts(conversation)[0]
    # llama2chat: the official truth layout, typo fixed
    assert truth_judge(tok, "llama2chat").prompt_texts(conversation) == [f"[INST] {user} [/INST]"]
    # raw: plain text, no markers
    assert truth_judge(tok, "raw").prompt_texts(conversation) == [user]
    for fmt in ("raw", "chat", "llama2chat"):
        ev = truth_judge(tok, fmt)
        assert all(tok.decode([i]).strip() == "Yes" for i in ev.good[0]) and ev.good[0]
        assert all(tok.decode([i]).strip() == "No" for i in ev.bad[0]) and ev.bad[0]
        shared, tails = ev._rows(conversation)
        assert list(shared) + list(tails[0]) == tok(ev.prompt_texts(conversation)[0],
                                                    add_special_tokens=fmt != "chat")["input_ids"]


def test_chat_judge_over_a_llama2_template_gives_the_official_truth_layout():
    tok = train_tokenizer("sentencepiece")
    tok.chat_template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    conversation = render_conversation("Why?", "Because.", "qa")
    chat, written = truth_judge(tok, "chat"), truth_judge(tok, "llama2chat")
    assert chat.prompt_texts(conversation) == ["<s>" + t for t in written.prompt_texts(conversation)]


def test_harm_judge_in_chat_is_the_template_plus_the_open_answer():
    tok = train_tokenizer("byte")
    ev = evaluator_with(tok, None, format="chat")
    conversation = render_conversation("q?", "a", "dialogue")
    instruction = rain.formats.read_prompt("harm_instruction.txt").rstrip("\n")
    for text, options in zip(ev.prompt_texts(conversation), ("harm_options_ab.txt", "harm_options_ba.txt")):
        body, _, lead = rain.formats.read_prompt(options).rstrip("\n").rpartition("\n")
        user = f"{instruction}\n\n{conversation}\n{body}"
        assert text == tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True) + lead
        assert lead == "The answer is: ("
