"""board/validate.py: host emulator metrics against board metrics, thresholds, the HTML report.

The metrics documents are made by hand (``_doc``) with the app's own ``summarize``, so each
test states exactly what differs; the end-to-end comparison through the app is in test_app.py.
"""

from __future__ import annotations

import copy
import json
import zlib
from html.parser import HTMLParser

import pytest

from board import app
from board.validate import (
    THRESHOLDS,
    ValidationError,
    compare,
    limits_for,
    load_thresholds,
    run,
    write_html,
)

LENIENT = {"default": {}}


def _result(image: str, q: int, bpp: float, psnr: float | None, seed: int = 0) -> dict:
    nets = {"g_a": 0.04 * q, "h_a": 0.01, "g_s": 0.05}
    return {
        "image": image, "quality": q, "bytes": int(bpp * 1000), "bpp": bpp, "psnr_bits": psnr,
        "psnr_range": None if psnr is None else psnr - 10, "ssim": 0.9, "ms_ssim": 0.95, "mse": 1.0,
        "max_abs_error": 0 if psnr is None else 7,
        "bitstream_sha256": f"{seed:02d}{q:02d}{zlib.crc32(image.encode()) % 10**8:08d}".ljust(64, "a"),
        "decoded_sha256": f"{seed:02d}{q:02d}".ljust(64, "b"),
        "encode_s": 0.2, "decode_s": 0.3, "encode_timing": {"coding_s": 0.01}, "decode_timing": {"coding_s": 0.02},
        "network_s": nets, "network_tiles": {"g_a": 4, "h_a": 4, "g_s": 4},
    }


def _doc(results: list[dict], runner: str = "emulator") -> dict:
    return {"schema": app.METRICS_SCHEMA, "model": "tiny-dpu", "qualities": sorted({r["quality"] for r in results}),
            "runner": {"name": runner, "reason": "", "details": {}},
            "runtime": {"model_hash": "c" * 64, "arch_fingerprint": "0x1", "manifest_sha256": "d" * 64},
            "platform": {"python": "3.10", "machine": "aarch64" if runner == "vart" else "x86_64"},
            "results": results, "errors": [], "summary": app.summarize(results)}


@pytest.fixture
def pair():
    rs = [_result(f"img{i}.dcm", q, 0.3 * q + 0.01 * i, 38.0 + 2 * q + i) for i in range(3) for q in (1, 2)]
    return _doc(rs), _doc(copy.deepcopy(rs), "vart")


def test_identical_runs_pass(pair):
    host, board = pair
    report = compare(host, board, LENIENT)
    assert report["ok"] and report["failures"] == []
    assert report["counts"] == {"host_results": 6, "board_results": 6, "bit_exact": 6, "failures": 0}
    assert report["runners"] == {"host": "emulator", "board": "vart"}
    assert set(report["rd"]) == {"1", "2"} and report["rd"]["2"]["board"]["bpp_mean"] == pytest.approx(0.61)
    assert report["latency"]["1"]["board"]["network_ms_per_tile"]["g_a"] == pytest.approx(10.0)
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("field", ["bitstream_sha256", "decoded_sha256"])
def test_a_different_hash_fails_and_names_the_image(pair, field):
    host, board = pair
    board["results"][3][field] = "f" * 64
    report = compare(host, board, LENIENT)
    assert not report["ok"] and report["counts"]["bit_exact"] == 5
    assert report["failures"] == [f"img1.dcm q2: {field} differs (host {host['results'][3][field][:16]}.., "
                                  f"board {'f' * 16}..)"]


def test_missing_results_errors_and_runtimes_fail(pair):
    host, board = pair
    board["results"].pop(0)
    board["errors"].append({"image": "img9.dcm", "quality": 1, "error": "unreadable"})
    board["runtime"]["model_hash"] = "e" * 64
    failures = compare(host, board, LENIENT)["failures"]
    assert "img0.dcm q1: missing from the board metrics" in failures
    assert "board error: img9.dcm q1: unreadable" in failures
    assert any(f.startswith("runtime model hash differs") for f in failures)


def test_thresholds_are_checked_per_quality(pair):
    host, board = pair
    th = {"default": {"min_psnr_bits": 41.0, "min_ms_ssim": 0.9}, "quality": {"2": {"max_bpp": 0.5}}}
    report = compare(host, board, th)
    assert report["limits"] == {"1": {"min_psnr_bits": 41.0, "min_ms_ssim": 0.9},
                                "2": {"min_psnr_bits": 41.0, "min_ms_ssim": 0.9, "max_bpp": 0.5}}
    assert not report["ok"]  # q1's PSNR mean is 41.0 exactly: on the limit passes
    assert report["failures"] == ["q2: bpp_mean 0.61 is above the limit 0.5 (max_bpp)"]


def test_an_exact_image_has_no_psnr_and_passes_a_psnr_limit():
    rs = [_result("flat.dcm", 1, 0.01, None)]
    assert compare(_doc(rs), _doc(copy.deepcopy(rs)), {"default": {"min_psnr_bits": 60.0}})["ok"]


def test_the_thresholds_file(tmp_path):
    th = load_thresholds(THRESHOLDS)
    assert set(limits_for(th, 1)) <= {"max_bpp", "min_psnr_bits", "min_psnr_range", "min_ms_ssim"}
    for doc, message in [
        ({"schema": "medcodec-thresholds/1", "default": {"min_psnr": 3}}, "unknown limit"),
        ({"schema": "medcodec-thresholds/1", "default": {"max_bpp": "1"}}, "must be a number"),
        ({"schema": "medcodec-thresholds/1", "extra": 1}, "unknown key"),
        ({"schema": "other"}, "schema must be"),
        ({"schema": "medcodec-thresholds/1", "quality": {"one": {}}}, "not a number"),
    ]:
        p = tmp_path / "t.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(ValidationError, match=message):
            load_thresholds(p)


def test_other_documents_are_refused(pair):
    host, board = pair
    with pytest.raises(ValidationError, match="board metrics: schema"):
        compare(host, {"schema": "x"}, LENIENT)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report(pair, tmp_path):
    host, board = pair
    board["results"][0]["image"] = "<script>alert(1)</script>.dcm"
    report = compare(host, board, {"default": {"max_bpp": 0.5}})
    path = write_html(report, tmp_path / "report.html")
    text = path.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    p = _Collect()
    p.feed(text)
    assert p.tags.count("table") == 2 and "svg" in p.tags and p.tags.count("circle") == 4
    words = " ".join(p.text)
    assert "FAIL" in words and "g_a" in words and "Rate-distortion" in words


def test_run_writes_json_and_html(pair, tmp_path):
    host, board = pair
    (tmp_path / "host.json").write_text(json.dumps(host))
    (tmp_path / "board.json").write_text(json.dumps(board))
    th = tmp_path / "th.json"
    th.write_text(json.dumps({"schema": "medcodec-thresholds/1", "default": {}}))
    report = run(tmp_path / "host.json", tmp_path / "board.json", tmp_path / "out", th)
    assert report["ok"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"] is True
    assert "PASS" in (tmp_path / "out" / "report.html").read_text()
