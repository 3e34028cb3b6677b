"""Class 6: model loading and output writing fail as one line naming the model or file and what to do (exit
status 2 from the commands), never a traceback; a failed write leaves no temporary file, and finished
records stay intact (a full disk at the merge included)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch

import rain
from launch_helpers import hh_file
from rain.config import ModelConfig, load_config
from rain.fileio import OutputError, atomic_write_text
from rain.loading import ModelError, check_model, load_model
from rain.parallel import launch, launcher_main
from rain.records import RunPaths, ShardWriter


def one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


# ----------------------------------------------------------------------------- models

def copy_without(tiny_dir, tmp_path, name, *, drop=None, replace=None):
    folder = tmp_path / name
    shutil.copytree(tiny_dir, folder)
    if drop:
        (folder / drop).unlink()
    if replace:
        file, data = replace
        (folder / file).write_bytes(data)
    return folder


def test_folder_with_config_but_no_weights(tiny_dir, tmp_path):
    folder = copy_without(tiny_dir, tmp_path, "noweights", drop="model.safetensors")
    with pytest.raises(ModelError) as err:
        load_model(str(folder))
    assert one_line(err) == (f"model folder {folder} has config.json but no weights (model.safetensors or "
                             "pytorch_model.bin): copy the weight files into it, or point model.name at the "
                             "complete folder")


@pytest.mark.parametrize("cut", ["garbage", "half"])
def test_corrupt_or_truncated_safetensors(tiny_dir, tmp_path, cut):
    data = (tiny_dir / "model.safetensors").read_bytes()
    broken = b"garbage" * 10 if cut == "garbage" else data[: len(data) // 2]
    folder = copy_without(tiny_dir, tmp_path, cut, replace=("model.safetensors", broken))
    with pytest.raises(ModelError) as err:
        load_model(str(folder))
    assert one_line(err).startswith(f"cannot load model '{folder}' (SafetensorError: Error while deserializing "
                                    "header")
    assert one_line(err).endswith("its weights look damaged: download them again")


def test_hub_id_not_cached_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        check_model(ModelConfig(name="someorg/not-cached-model"))
    assert one_line(err).startswith("model 'someorg/not-cached-model' is not a local folder and is not in the "
                                    "Hugging Face cache, and the hub is offline (HF_HUB_OFFLINE=1): download it first")
    with pytest.raises(ModelError, match="neither a local folder, a .gguf file nor a valid hub id"):
        check_model(ModelConfig(name="not a/valid id"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_cuda(tiny_dir):
    with pytest.raises(ModelError) as err:
        load_model(ModelConfig(name=str(tiny_dir), device="cuda"))
    assert one_line(err).startswith("model.device=cuda, but this process sees no CUDA GPU")


def test_a_gpu_number_beyond_the_visible_ones(tiny_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelError, match=r"model.device=cuda:5, but this process sees 2 GPU\(s\).*cuda:0 to cuda:1"):
        check_model(ModelConfig(name=str(tiny_dir), device="cuda:5"))


def test_a_malformed_device_is_a_config_error():
    with pytest.raises(ValueError, match=r"model.device must be auto, cpu, cuda or cuda:N .*got 'cuda:abc'"):
        load_config(None, ["model.device=cuda:abc"])


def test_a_damaged_gguf_file_leaves_no_half_converted_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RAIN_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot read the GGUF model"):
        load_model(str(bad))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_launcher_with_an_uncached_hub_model_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', ['q?'])}\n"
                       f"  outdir: {tmp_path / 'out'}\n")
    assert launcher_main(["--model", "someorg/not-cached"], benchmark="HH", default_config=default) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rain: error: model 'someorg/not-cached' is not a local folder") and "\n" not in err


def test_rain_generate_with_a_bad_model_is_one_line_exit_2(tmp_path, capsys, tiny_dir):
    from rain.cli import main

    folder = copy_without(tiny_dir, tmp_path, "noweights", drop="model.safetensors")
    assert main(["generate", "hi", f"--model.name={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rain: error: model folder") and "no weights" in err and "\n" not in err


# ----------------------------------------------------------------------------- outputs

def enospc_on_tmp(monkeypatch):
    """Make every fsync of a temporary file fail as a full disk would."""
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_full_disk_at_the_merge_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(os.path.dirname(__file__)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = load_config(None, [f"run.data={hh_file(tmp_path / 'hh.jsonl', ['a?', 'b?', 'c?'])}",
                             f"run.outdir={tmp_path / 'out'}", "run.name=t"])
    assert launch(cfg, nump=1, answerer="fake_answerer:make", poll_s=0.05) == 0
    paths = RunPaths(tmp_path / "out", "t")
    merged_before, shard_before = paths.merged.read_bytes(), paths.shard(rank=0, world=1).read_bytes()
    capsys.readouterr()
    enospc_on_tmp(monkeypatch)
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {tmp_path / 'hh.jsonl'}\n  outdir: {tmp_path / 'out'}\n"
                       "  name: t\n")
    for _ in range(3):  # every attempt: one line, nothing left behind
        assert launcher_main(["--merge-only"], benchmark="HH", default_config=default) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"rain: error: cannot write {paths.merged}: No space left on device; free disk space, then "
                       f"merge again with --merge-only (the finished records are safe in {paths.parts})")
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert paths.merged.read_bytes() == merged_before and paths.shard(rank=0, world=1).read_bytes() == shard_before


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    path.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match=r"cannot write .*x\.json: Read-only file system"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_full_disk_while_appending_a_record(tmp_path, monkeypatch):
    path = tmp_path / "parts" / "shard-000-of-001.jsonl"
    writer = ShardWriter(path)
    writer.append({"id": 0, "status": "ok"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot append a record to .*: No space left on device; free space and "
                                          r"rerun the same command \(finished records are kept\)"):
        writer.append({"id": 1, "status": "ok"})
    writer.close()
    assert json.loads(path.read_text().splitlines()[0]) == {"id": 0, "status": "ok"}


def write_results(folder):
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / "run.json"
    results.write_text(json.dumps([{"id": 0, "question": "q", "prompt": "q", "raina": "I cannot.", "pa": "Sure.",
                                    "status": "ok"}]))
    return results


def test_rain_judge_beside_a_read_only_results_file(tmp_path, monkeypatch, capsys):
    from rain.judge.cli import judge_main

    results = write_results(tmp_path / "ro")
    real_open = open

    def read_only(file, mode="r", *args, **kwargs):  # the folder refuses new files (as for a non-root user)
        if str(file).startswith(str(tmp_path / "ro")) and any(m in mode for m in "wax"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    assert judge_main([str(results), "--benchmark", "adv", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rain judge: error: cannot write to output folder {tmp_path / 'ro'}: Permission denied")
    assert "copy it (and its .meta.json) to a writable folder" in err and "\n" not in err
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["run.json"]


def test_rain_report_to_an_unwritable_place(tmp_path, capsys):
    from rain.judge.cli import judge_main, report_main

    results = write_results(tmp_path / "res")
    assert judge_main([str(results), "--benchmark", "adv", "--quiet"]) == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert report_main([str(results), "--out", str(blocker / "report"), "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rain report: error: cannot create output folder {blocker / 'report'}: Not a directory")
    assert "pass --out with a writable folder" in err and "\n" not in err


def test_the_launcher_on_an_unwritable_outdir(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    default = tmp_path / "d.yaml"
    default.write_text(f"run:\n  benchmark: HH\n  data: {hh_file(tmp_path / 'hh.jsonl', ['q?'])}\n")
    assert launcher_main(["--outdir", str(tmp_path / "file" / "out")], benchmark="HH", default_config=default) == 2
    assert capsys.readouterr().err.strip() == (f"rain: error: cannot create output folder {tmp_path / 'file' / 'out'}"
                                               ": Not a directory")


def test_the_public_api_raises_the_same_one_line_errors(tiny_dir, tmp_path):
    folder = copy_without(tiny_dir, tmp_path, "x", drop="model.safetensors")
    with pytest.raises(ValueError, match="has config.json but no weights"):  # ModelError is a ValueError
        rain.load_model(str(folder))


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\\\b"])
def test_a_run_name_cannot_write_outside_its_outdir(name):
    with pytest.raises(ValueError, match="run.name must be a plain file name"):
        load_config(None, [f"run.name={name}"])
