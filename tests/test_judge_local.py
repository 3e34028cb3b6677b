"""The offline judge: a local HF model behind the same interface (plumbing only, tiny random model)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from rain.judge import prompts
from rain.judge.cache import VerdictCache
from rain.judge.cli import judge_main
from rain.judge.local import LocalChatBackend, load_local_backend
from rain.judge.verdicts import Judge, Question


class CannedModel:
    """Stands in for a causal LM: `generate` appends fixed token ids and remembers its input."""

    device = "cpu"

    def __init__(self, reply_ids: list[int]):
        self.reply_ids = reply_ids
        self.inputs: list[torch.Tensor] = []

    def generate(self, *, input_ids, attention_mask=None, max_new_tokens, do_sample, pad_token_id):
        assert do_sample is False
        self.inputs.append(input_ids)
        return torch.cat([input_ids, torch.tensor([self.reply_ids])], dim=1)


@pytest.fixture()
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def test_chat_style_feeds_the_chat_template_and_decodes_only_new_tokens(tokenizer):
    model = CannedModel(tokenizer.encode("safe", add_special_tokens=False))
    backend = LocalChatBackend(model=model, tokenizer=tokenizer, name="local:guard")
    judge = Judge(backend=backend, cache=VerdictCache(None))
    [verdict] = judge.judge_all([Question.of(prompts.GUARD_HARMLESS, question="Is the sky blue?", answer="Yes")])
    assert verdict.value is True and verdict.raw == "safe"
    fed = tokenizer.decode(model.inputs[0][0])
    assert "user\nIs the sky blue?" in fed and "assistant\nYes" in fed and fed.endswith("assistant\n")
    assert backend.usage.requests == 1 and backend.usage.tokens_in == model.inputs[0].shape[1]


def test_completion_style_feeds_the_truthfulqa_format_verbatim(tokenizer):
    model = CannedModel(tokenizer.encode(" no", add_special_tokens=False))
    backend = LocalChatBackend(model=model, tokenizer=tokenizer, name="local:truth", use_chat_template=False)
    messages = prompts.ALLENAI_TRUTHFUL.render({"question": "Is the sky blue?", "answer": "No"})
    assert backend.prompt_text(messages) == "Q: Is the sky blue?\nA: No\nTrue:"
    reply = backend.complete(messages)
    assert prompts.ALLENAI_TRUTHFUL.parse(reply.text) is False


def test_tiny_random_model_loads_and_generates(tiny_dir):
    backend = load_local_backend(str(tiny_dir), use_chat_template=False, max_new_tokens=3, device="cpu")
    reply = backend.complete([{"role": "user", "content": "Q: What is the capital of France?\nA: Paris\nTrue:"}])
    assert isinstance(reply.text, str) and 1 <= reply.tokens_out <= 3


def test_local_truthfulqa_judges_score_every_answer_through_the_cli(tmp_path, tiny_dir):
    records = [{"id": i, "question": "q", "prompt": f"Question {i}?", "best_answer": "b", "source": "s",
                "raina": f"rain answer {i}", "pa": f"vanilla answer {i}"} for i in range(2)]
    run = tmp_path / "truth.json"
    run.write_text(json.dumps(records))
    argv = [str(run), "--judge", "local", "--local-model", str(tiny_dir), "--local-info-model", str(tiny_dir),
            "--local-device", "cpu", "--local-max-new-tokens", "2", "--quiet"]
    assert judge_main(argv) == 0
    scored = json.loads((tmp_path / "truth.scored.json").read_text())
    for record in scored:
        for scores in record["scores"].values():
            for name in ("truthful", "informative"):
                assert scores[name] in (True, False, None)
                assert (scores[name] is None) == (name in scores["unparseable"])
    summary = json.loads((tmp_path / "truth.summary.json").read_text())
    assert summary["templates"] == {"truthful": "allenai_truthful@1", "informative": "allenai_informative@1"}
    assert sum(u["questions_asked"] for u in summary["usage"].values()) == 8
    assert judge_main(argv) == 0
    summary = json.loads((tmp_path / "truth.summary.json").read_text())
    assert sum(u["questions_asked"] for u in summary["usage"].values()) == 0


def test_local_guard_on_hh_scores_harmlessness_only_and_says_so(tmp_path, tiny_dir, capsys):
    records = [{"id": 0, "question": "q", "prompt": "p", "raina": "a", "pa": "b"}]
    run = tmp_path / "hh.json"
    run.write_text(json.dumps(records))
    (tmp_path / "hh.meta.json").write_text(json.dumps({"benchmark": "HH", "model": "m"}))
    argv = [str(run), "--judge", "local", "--local-model", str(tiny_dir), "--local-device", "cpu",
            "--local-max-new-tokens", "2", "--quiet"]
    assert judge_main(argv) == 0
    assert "harmlessness only" in capsys.readouterr().err
    scores = json.loads((tmp_path / "hh.scored.json").read_text())[0]["scores"]["raina"]
    assert "harmless" in scores and "helpful" not in scores


def test_local_judge_without_a_model_path_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "hh.json"
    run.write_text(json.dumps([{"id": 0, "question": "q", "raina": "a", "pa": "b"}]))
    assert judge_main([str(run), "--benchmark", "HH", "--judge", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--local-model PATH" in err


def test_unloadable_local_model_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "hh.json"
    run.write_text(json.dumps([{"id": 0, "question": "q", "raina": "a", "pa": "b"}]))
    missing = tmp_path / "no-such-model"
    assert judge_main([str(run), "--benchmark", "HH", "--judge", "local", "--local-model", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot load local judge model" in err
