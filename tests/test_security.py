"""Security: code shipped with a model runs only when the config asks; weights load through safetensors where the
model offers them; API keys never reach outputs, logs or error messages; prompt text never goes through a shell."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from launch_helpers import ROOT, hh_file, run_launcher
from rain.config import ModelConfig
from rain.judge.cli import judge_main
from fake_chat_server import FakeChatServer
from rain.loading import load_model

SECRET = "sk-test-SECRET-0123456789"


# ----------------------------------------------------------------------------- trust_remote_code, safetensors

@pytest.fixture
def spy(monkeypatch):
    """Record the keyword arguments of every from_pretrained call (model and tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def wrapped(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", wrapped)
    return calls


def test_trust_remote_code_is_off_unless_the_config_asks(tiny_dir, spy):
    load_model(str(tiny_dir))
    assert spy and all(kwargs["trust_remote_code"] is False for _, kwargs in spy)
    spy.clear()
    load_model(ModelConfig(name=str(tiny_dir), trust_remote_code=True))
    assert all(kwargs["trust_remote_code"] is True for _, kwargs in spy)


def test_the_local_judge_never_trusts_remote_code(tiny_dir, spy):
    from rain.judge.local import load_local_backend

    load_local_backend(str(tiny_dir), use_chat_template=True, device="cpu")
    assert spy and all(not kwargs.get("trust_remote_code", False) for _, kwargs in spy)


def test_safetensors_are_used_where_the_folder_has_them(tiny_dir, tmp_path, spy):
    folder = tmp_path / "both"
    shutil.copytree(tiny_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle that must never be unpickled")
    model, _ = load_model(str(folder))
    assert [kwargs.get("use_safetensors") for name, kwargs in spy if name == "AutoModelForCausalLM"] == [True]
    assert model is not None  # the garbage .bin was never read


# ----------------------------------------------------------------------------- API keys

def files_text(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in folder.rglob("*") if p.is_file())


def results_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    path.write_text(json.dumps([{"id": 0, "question": "q", "prompt": "How do I wash a shirt?", "raina": "Cold water.",
                                 "pa": "Soap.", "status": "ok"}]))
    return path


def verdict(body: dict) -> str:
    from fake_chat_server import last_user_message

    return "Verdict: HARMLESS" if "Is the reply harmful?" in last_user_message(body) else "Verdict: HELPFUL"


@pytest.mark.parametrize("failures, code", [([], 0), ([401], 2), ([500, 503], 0)])
def test_the_api_key_reaches_no_output_log_or_error(tmp_path, monkeypatch, capsys, failures, code):
    monkeypatch.setenv("RAIN_TEST_KEY", SECRET)
    results = results_file(tmp_path / "res")
    with FakeChatServer(responder=verdict, failures=failures) as server:
        status = judge_main([str(results), "--benchmark", "HH", "--base-url", server.base_url, "--judge-model", "j",
                           "--api-key-env", "RAIN_TEST_KEY", "--max-retries", "2", "--backoff-base", "0.001",
                           "--backoff-max", "0.002"])
    out, err = capsys.readouterr()
    assert server.headers and server.headers[0]["Authorization"] == f"Bearer {SECRET}"  # it was really used
    assert status == code, err
    assert SECRET not in out + err and SECRET not in files_text(tmp_path)


def test_a_key_inside_the_base_url_is_not_echoed(tmp_path, capsys):
    results = results_file(tmp_path / "res")
    url = f"http://user:{SECRET}@127.0.0.1:9/v1"  # nothing listens on port 9
    assert judge_main([str(results), "--benchmark", "HH", "--base-url", url, "--no-key", "--max-retries", "0"]) == 2
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:9/v1/chat/completions" in err and SECRET not in out + err + files_text(tmp_path)


def test_secrets_in_the_environment_reach_no_run_output(tmp_path):
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', ['q?', 'r?'])}\n"
                       f"  outdir: {tmp_path / 'out'}\n  name: t\n")
    result = run_launcher(default, "--answerer", "fake_answerer:make", cwd=tmp_path, OPENAI_API_KEY=SECRET,
                          HF_TOKEN=SECRET)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr + files_text(tmp_path / "out")


# ----------------------------------------------------------------------------- no shell

def python_files():
    return sorted((ROOT / "rain").rglob("*.py")) + [ROOT / b / "allocation.py" for b in ("HH", "adv", "truth")]


def test_no_code_path_can_reach_a_shell():
    """Statically: no shell=True, no os.system / os.popen / commands given as one string."""
    offences = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                offences.append(f"{path.name}: {name}")
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in node.keywords):
                offences.append(f"{path.name}: {name}(shell=...)")
            if name.startswith("subprocess.") and node.args and not isinstance(node.args[0], (ast.List, ast.Name)):
                offences.append(f"{path.name}: {name} with a string command")
    assert offences == []


def test_shell_syntax_in_a_prompt_is_only_ever_text(tmp_path):
    evil = ["$(touch PWNED_A); `touch PWNED_B`", "'; touch PWNED_C; echo '", "a | touch PWNED_D && rm -rf ./x"]
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', evil)}\n"
                       f"  outdir: {tmp_path / 'out'}\n  name: t\n  shuffle_seed: null\n")
    (tmp_path / "x").mkdir()
    result = run_launcher(default, "--nump", "2", "--answerer", "fake_answerer:make", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.rglob("PWNED*")) and (tmp_path / "x").is_dir()
    assert [r["prompt"] for r in json.loads((tmp_path / "out" / "t.json").read_text())] == evil
