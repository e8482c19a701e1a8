"""The one evaluation path: the shared generate loop, and synthetic evaluation writing what ``must eval`` writes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from must.data.config import DataConfig
from must.data.datasets import synthetic_split
from must.eval import answer_clips, summary
from must.models.lalm import MusicLALM
from must.stages import common

TINY = {"encoder": {"width": 32, "layers": 1, "heads": 2, "n_mels": 16},
        "llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64}}
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mustbench_demo"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(TINY).eval()


def _clip(seconds: float, seed: int):
    wave = np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
    return lambda: (wave, 16000)


def test_answer_clips_groups_tracks_and_keeps_their_order(model):
    questions = [["When does the bass enter?", "Which change is at 0:03?"], ["Q?", "When?", "Order?"], ["Mood?"]]
    clips = [(qs, _clip(4 + i, i)) for i, qs in enumerate(questions)]
    grouped = list(answer_clips(model, clips, max_new_tokens=5, batch_size=4))
    alone = [next(answer_clips(model, [c], max_new_tokens=5, batch_size=1)) for c in clips]
    assert [r["texts"] for r in grouped] == [r["texts"] for r in alone]  # same answers, clip by clip
    assert [len(r["texts"]) for r in grouped] == [2, 3, 1] and all(r["error"] is None for r in grouped)
    assert [r["duration"] for r in grouped] == pytest.approx([4, 5, 6], abs=1e-3)
    direct = model.generate(model.encode_audio([clips[1][1]()[0]], 16000, stochastic=False).index_select([0] * 3),
                            questions[1], max_new_tokens=5)
    assert grouped[1]["texts"] == [a[0] for a in direct]


def test_answer_clips_records_a_broken_track_and_goes_on(model):
    def broken():
        raise OSError("not audio")

    clips = [(["When?"], _clip(4, 0)), (["Q?"], broken), (["Mood?"], _clip(5, 1))]
    results = list(answer_clips(model, clips, max_new_tokens=3, batch_size=8, record_errors=True))
    assert results[1] == {"texts": None, "duration": None, "covered_seconds": None, "error": "OSError: not audio"}
    assert [len(results[0]["texts"]), len(results[2]["texts"])] == [1, 1]
    with pytest.raises(OSError, match="not audio"):
        list(answer_clips(model, clips, max_new_tokens=3))


def test_synthetic_evaluation_writes_what_must_eval_writes(model, tmp_path):
    data = DataConfig(min_seconds=8, max_seconds=10, test_tracks=3, questions_per_track=4)
    out = tmp_path / "syn"
    got = common.evaluate(model, data, out, "tiny", max_new_tokens=4, quiet=True)
    scores = json.loads((out / "scores.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    qas = synthetic_split(data, "test", render_audio=False)[1]
    assert [p["id"] for p in preds] == [r["id"] for r in scores["rows"]] == [q.id for q in qas]
    assert scores["chance"] == {"LTR": 25.0, "GTO": pytest.approx(100 / 6)}
    assert got == summary(scores) and got["overall"] == scores["overall"] and "tad_clap" in got
    report = (out / "report.md").read_text()
    assert "**tiny** (this run)" in report and f"data: the synthetic test split (3 tracks, {len(qas)} questions" in report
    timelines = [p for p in preds if p["task"] in ("TSG", "MTR")]
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots and len(plots) == min(4, sum(p["task"] == "TSG" for p in preds)) + min(4, sum(
        p["task"] == "MTR" for p in preds)) and all(any(r["id"] in name for r in timelines) for name in plots)
    assert all(p["answer"] and p["covered_seconds"] == pytest.approx(p["duration"], abs=0.5) for p in preds)
    if (FIXTURE / "mustbench_demo.parquet").is_file():  # the parquet path writes the same record, field for field
        real = DataConfig(source="mustbench", parquet=str(FIXTURE / "mustbench_demo.parquet"))
        common.evaluate(model, real, tmp_path / "real", "tiny", max_new_tokens=4, quiet=True)
        (row,) = [json.loads(line) for line in (tmp_path / "real" / "predictions.jsonl").read_text().splitlines()]
        assert set(row) == set(preds[0]) and (tmp_path / "real" / "report.md").is_file()
