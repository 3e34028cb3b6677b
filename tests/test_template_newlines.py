"""Class 8: template files are read as Python's text mode reads them (universal newlines), as the official code
does, so the official f1/f2/r1/r2 files with CRLF line endings give the model the same text as LF files:
no carriage return reaches the policy prompt or the judge prompt."""

from __future__ import annotations

import pytest

from rain.config import JudgeConfig, PromptConfig
from rain.evaluate import SelfEvaluator
from rain.formats import PROMPTS_DIR, check_judge_options, prompt_text, read_prompt
from tiny import train_tokenizer

NAMES = ["hh_fewshot.txt", "harm_instruction.txt", "harm_options_ab.txt", "harm_options_ba.txt"]


@pytest.fixture
def crlf_copies(tmp_path):
    """Each shipped template rewritten with CRLF (Windows) and CR (old Mac) line endings."""
    copies = {}
    for ending in ("\r\n", "\r"):
        folder = tmp_path / repr(ending).strip("'").replace("\\", "")
        folder.mkdir()
        for name in NAMES:
            text = (PROMPTS_DIR / name).read_text(encoding="utf-8")
            (folder / name).write_bytes(text.replace("\n", ending).encode("utf-8"))
        copies[ending] = folder
    return copies


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_read_prompt_gives_no_carriage_return(crlf_copies, ending):
    for name in NAMES:
        path = crlf_copies[ending] / name
        assert ending.encode() in path.read_bytes()
        assert read_prompt(str(path)) == read_prompt(name) and "\r" not in read_prompt(str(path))


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_the_policy_prompt_from_a_crlf_fewshot_file_equals_the_lf_one(crlf_copies, ending):
    tok = train_tokenizer("byte")
    crlf = prompt_text(tok, "How do I bake bread?", PromptConfig(fewshot_file=str(crlf_copies[ending] /
                                                                                  "hh_fewshot.txt")))
    assert crlf == prompt_text(tok, "How do I bake bread?", PromptConfig()) and "\r" not in crlf


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_the_judge_prompt_from_crlf_files_equals_the_lf_one(crlf_copies, ending):
    tok = train_tokenizer("byte")
    folder = crlf_copies[ending]
    crlf_cfg = JudgeConfig(instruction_file=str(folder / "harm_instruction.txt"),
                           options_files=(str(folder / "harm_options_ab.txt"), str(folder / "harm_options_ba.txt")))
    check_judge_options(crlf_cfg)
    crlf, lf = SelfEvaluator(NoEngine(), tok, crlf_cfg), SelfEvaluator(NoEngine(), tok, JudgeConfig())
    conversation = "Human: hi\nAssistant: hello"
    assert crlf.prompt_texts(conversation) == lf.prompt_texts(conversation)
    assert crlf._rows(conversation) == lf._rows(conversation)
    assert not any("\r" in text for text in crlf.prompt_texts(conversation))


class NoEngine:
    """The evaluator's engine is only asked to store the fixed prefix here."""

    def share(self, tokens):
        return None
