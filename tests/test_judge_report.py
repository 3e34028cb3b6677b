"""`rain report` on small scored fixtures: tables per benchmark and a valid PNG plot."""

import json
import struct
import zlib
from pathlib import Path

from rain.judge.cli import report_main
from rain.judge.report import benchmark_table, plot_hh, write_report


def _rate(k: int, n: int) -> dict:
    return {"rate": k / n, "k": k, "n": n, "unparseable": 0}


def _hh_summary(model: str, *, vanilla: tuple, rain: tuple, ratio: float = 4.0) -> dict:
    return {"benchmark": "HH", "model": model, "n_records": 10, "n_skipped": 0,
            "kinds": {"raina": "RAIN", "pa": "vanilla"}, "judges": ["gpt-4@https://api.openai.com/v1"],
            "rates": {"pa": {"harmless": _rate(*vanilla[0]), "helpful": _rate(*vanilla[1])},
                      "raina": {"harmless": _rate(*rain[0]), "helpful": _rate(*rain[1])}},
            "time": {"rain_over_vanilla": ratio, "n": 10},
            "pairwise": {"win": _rate(5, 10), "tie": _rate(4, 10), "lose": _rate(1, 10), "n": 10, "unparseable": 0}}


def _adv_summary() -> dict:
    return {"benchmark": "adv", "model": "vicuna-7b", "n_records": 4, "n_skipped": 1, "judges": [],
            "kinds": {"raina": "RAIN", "pa": "vanilla"},
            "rates": {"pa": {"refusal_jailbroken": _rate(3, 4)}, "raina": {"refusal_jailbroken": _rate(1, 4)}},
            "time": {"rain_over_vanilla": None, "n": 0}}


def _write(folder: Path, name: str, summary: dict) -> Path:
    path = folder / f"{name}.summary.json"
    path.write_text(json.dumps(summary))
    return path


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body, crc = data[offset + 8:offset + 8 + length], data[offset + 8 + length:offset + 12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body)
        chunks.append(kind)
        offset += 12 + length
    return chunks


def test_report_writes_paper_tables_and_a_valid_png(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    _write(runs, "llama30b", _hh_summary("llama-30b", vanilla=((8, 10), (9, 10)), rain=((10, 10), (9, 10)), ratio=4.36))
    _write(runs, "adv", _adv_summary())
    out = tmp_path / "report"
    assert report_main([str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| llama-30b | 10 | 80.0% -> 100.0% | 90.0% -> 90.0% | 50%/40%/10% | 4.36x |" in text
    assert "| vicuna-7b | 4 | 75.0% -> 25.0% | - |" in text
    png = (out / "hh_harmless_vs_helpful.png").read_bytes()
    chunks = _png_chunks(png)
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100
    assert "hh_harmless_vs_helpful.png" in text


def test_results_file_argument_finds_its_summary(tmp_path):
    _write(tmp_path, "run", _hh_summary("m", vanilla=((1, 2), (1, 2)), rain=((2, 2), (1, 2))))
    (tmp_path / "run.json").write_text("[]")
    report = write_report([tmp_path / "run.json"], out_dir=tmp_path / "r", plot=False)
    assert "| m | 10 | 50.0% -> 100.0%" in report.read_text()
    assert not (tmp_path / "r" / "hh_harmless_vs_helpful.png").exists()


def test_no_hh_summary_with_both_rates_means_no_plot(tmp_path):
    guard_only = _hh_summary("m", vanilla=((1, 2), (1, 2)), rain=((2, 2), (1, 2)))
    for kind in ("pa", "raina"):
        del guard_only["rates"][kind]["helpful"]
    assert plot_hh([guard_only, _adv_summary()], path=tmp_path / "p.png") is False
    assert not (tmp_path / "p.png").exists()
    assert "Helpful" not in benchmark_table([guard_only], benchmark="HH")


def test_missing_summary_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run.json").write_text("[]")
    assert report_main([str(tmp_path / "run.json"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `rain judge" in err


def test_report_reads_what_rain_judge_writes(tmp_path):
    from rain.judge.cli import judge_main

    records = [{"id": 0, "question": "q", "prompt": "p", "raina": "I cannot.", "pa": "Sure.",
                "stats": {"rain": {"seconds": 3.0}, "vanilla": {"seconds": 1.0}}}]
    (tmp_path / "adv.json").write_text(json.dumps(records))
    (tmp_path / "adv.meta.json").write_text(json.dumps({"benchmark": "adv", "model": "tiny"}))
    assert judge_main([str(tmp_path / "adv.json"), "--quiet"]) == 0
    report = write_report([tmp_path], out_dir=tmp_path / "r")
    assert "| tiny | 1 | 100.0% -> 0.0% | 3.00x |" in report.read_text()
