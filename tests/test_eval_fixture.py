"""``must eval`` end to end on the real fixture track with a tiny model; an unreadable track is recorded."""

import json
import shutil

import pandas as pd
import pytest

from must.cli import main
from tests._fixtures import DEMO as FIXTURE
from tests._fixtures import needs_fixture


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from must.models.lalm import MusicLALM

    path = tmp_path_factory.mktemp("model") / "tiny"
    MusicLALM.from_config(None).save_pretrained(path)
    return path


@needs_fixture("mustbench_demo", "1023323.mp3")
def test_must_eval_on_the_real_row(tmp_path, tiny_model, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    shutil.copy(FIXTURE / "1023323.mp3", audio / "1023323.mp3")
    (audio / "broken.mp3").write_bytes(b"this is not an mp3")
    real = pd.read_parquet(FIXTURE / "mustbench_demo.parquet")
    extra = pd.DataFrame([
        {"id": "tsg-real", "track_id": "1023323", "task": "TSG", "category": "vocals", "qa_type": "onset",
         "question": "When do the vocals first appear?", "answer": "0:12", "answers": ["0:12"], "split": "test"},
        {"id": "tsg-broken", "track_id": "broken", "task": "TSG", "category": "drums", "qa_type": "offset",
         "question": "When do the drums finally disappear?", "answer": "0:40", "answers": ["0:40"], "split": "test"},
    ])
    data = tmp_path / "bench.parquet"
    pd.concat([real, extra], ignore_index=True).to_parquet(data)
    out = tmp_path / "out"
    code = main(["eval", str(tiny_model), "--data", str(data), "--audio-dir", str(audio), "--out", str(out),
                 "--max-new-tokens", "8"])
    assert code == 0
    preds = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert set(preds) == {"mtr-1023323", "tsg-real", "tsg-broken"}
    real_row = preds["mtr-1023323"]
    assert real_row["error"] is None and isinstance(real_row["prediction"], str)
    assert real_row["duration"] == pytest.approx(97.4, abs=0.1)
    assert real_row["covered_seconds"] == pytest.approx(real_row["duration"], abs=0.5)  # the whole track
    assert preds["tsg-broken"]["error"] and "broken" in preds["tsg-broken"]["error"]
    assert preds["tsg-broken"]["prediction"] is None
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) >= {"TSG", "LTR", "TAD", "GTO", "MTR", "overall", "missing", "rows", "baseline"}
    assert scores["LTR"] is None
    # the one MTR row's IoU is the task's (a percentage of the union, its F1 beside it)
    (mtr,) = [r for r in scores["rows"] if r["task"] == "MTR"]
    assert scores["MTR"]["iou"] == pytest.approx(mtr["mtr_iou"], abs=0.01) and 0.0 <= mtr["mtr_iou"] <= 100.0
    assert scores["MTR"]["score"] == pytest.approx((scores["MTR"]["iou"] + scores["MTR"]["f1"]) / 2, abs=0.01)
    assert scores["missing_predictions"] == ["tsg-broken"]
    # whole-track baseline on the real row, written as text ("0:00–1:37", 97 s): G = 0:57–1:12 (15 s) inside it
    assert scores["baseline"]["MTR"]["iou"] == pytest.approx(100 * 15 / 97, abs=0.005)
    # the broken track has no duration, so its offset baseline cannot be made and is named missing
    assert scores["baseline"]["TSG"]["offset"] is None and "tsg_offset" in scores["baseline"]["missing"]
    report = (out / "report.md").read_text()
    assert "(this run)" in report and "| MusT 7B | 55.5 |" in report and "trivial baseline" in report
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["MTR_mtr-1023323.png", "TSG_tsg-broken.png", "TSG_tsg-real.png"]
    assert all((out / "plots" / p).stat().st_size > 5000 for p in plots)
    assert "## Timelines" in report and "![TSG_tsg-real](plots/TSG_tsg-real.png)" in report


def test_must_eval_where_every_row_failed_exits_2_and_keeps_its_outputs(tmp_path, tiny_model, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "broken.mp3").write_bytes(b"this is not an mp3")
    rows = pd.DataFrame([
        {"id": f"tsg-broken-{k}", "track_id": "broken", "task": "TSG", "category": "drums", "qa_type": "offset",
         "question": "When do the drums finally disappear?", "answer": "0:40", "answers": ["0:40"], "split": "test"}
        for k in range(2)])
    data = tmp_path / "bench.parquet"
    rows.to_parquet(data)
    out = tmp_path / "out"
    code = main(["eval", str(tiny_model), "--data", str(data), "--out", str(out), "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "all 2 row(s) could not be run" in err and "tsg-broken-0" in err
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in preds] == [None, None] and all("broken" in p["error"] for p in preds)
