"""must.tracking: rollout tables, reward histograms and transition plots under W&B offline, CSV and no logger."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from lightning.pytorch.loggers import CSVLogger

from must import tracking
from must.data import build_qas, generate_track
from must.data.targets import frame_times, transition_curve
from must.rewards import score_completion
from tests._wandb import run_bytes


@pytest.fixture(scope="module")
def track():
    return generate_track(7)


@pytest.fixture(scope="module")
def rows(track):
    by_task = {}
    for qa in build_qas(track, 7):
        by_task.setdefault(qa.task, qa)
    bounds = [t.time for t in track.transitions]
    return [tracking.rollout_row(by_task[t], [by_task[t].answer, "0:05", "banana"], audio=track.audio,
                                 sample_rate=track.sample_rate, boundaries=bounds) for t in ("TSG", "LTR", "MTR")]


def curve(track, scale=0.5):
    return tracking.TransitionCurve(frame_times(track.duration, 2.5), transition_curve(track, 2.5) * scale,
                                    [t.time for t in track.transitions], track.id, threshold=0.3)


def test_rollout_row_scores_each_answer_with_the_reward_components(rows, track):
    tsg = rows[0]
    assert tsg.task == "TSG" and tsg.track_id == track.id and tsg.duration == pytest.approx(track.duration)
    assert tsg.rewards[0] == score_completion("TSG", tsg.answers[0], tsg.reference[0], tsg.reference, track.duration)
    assert tsg.totals()[0] == pytest.approx(1.2)  # exact answer: accuracy 1 + 0.2 * format 1
    assert tsg.totals()[2] == pytest.approx(-0.5)  # unreadable: the bad-format penalty


def test_rollout_rows_groups_generations_under_their_prompt(track):
    prompts = [{"task": "TSG", "question": f"q{i}", "answer": "0:10", "track_id": f"t{i}", "duration": 30.0,
                "waveform": np.zeros(160, np.float32)} for i in range(3)]
    out = tracking.rollout_rows(prompts, ["0:10", "0:20", "0:11", "x", "0:12", "0:13"], num_generations=2,
                                limit=2, boundaries={"t1": [4.0]})
    assert [r.question for r in out] == ["q0", "q1"]
    assert out[1].answers == ["0:11", "x"] and out[1].boundaries == [4.0]
    assert out[0].totals()[0] > out[0].totals()[1]
    given = tracking.rollout_rows(prompts[:1], ["0:10", "x"], 2, components={"total": [0.5, None], "f": [1, 0]})
    assert given[0].rewards == [{"total": 0.5, "f": 1.0}, {"total": pytest.approx(float("nan"), nan_ok=True), "f": 0.0}]
    assert given[0].totals() == [0.5, None]
    with pytest.raises(ValueError, match="components\\['f'\\] has 1 values for 2"):
        tracking.rollout_rows(prompts[:1], ["0:10", "x"], 2, components={"f": [1]})
    with pytest.raises(ValueError, match="5 completions for 3 rows x 2"):
        tracking.rollout_rows(prompts, ["a"] * 5, num_generations=2)


def test_csv_logger_writes_table_audio_and_timelines(tmp_path, rows, track):
    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    out = tracking.log_rollout_table(logger, rows, 7, tmp_path)
    assert out == tmp_path / "media" / "rollouts" / "step_000007"
    lines = list(csv.DictReader((out / "rows.csv").open()))
    assert len(lines) == 9  # 3 questions x 3 answers
    assert {"accuracy", "format", "bad_format", "total", "audio", "timeline"} <= set(lines[0])
    assert float(lines[2]["total"]) == pytest.approx(-0.5) and lines[2]["answer"] == "banana"
    records = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["task"] for r in records] == ["TSG", "LTR", "MTR"] and len(records[2]["answers"]) == 3
    assert records[0]["audio"] == records[2]["audio"] == f"audio/{track.id}.flac"  # one file per track
    assert len(list((out / "audio").iterdir())) == 1
    wave, sr = sf.read(out / records[0]["audio"])
    assert sr == track.sample_rate and len(wave) == len(track.audio)
    assert np.abs(wave - track.audio).max() < 1e-3  # 16-bit FLAC of the track
    pngs = [out / r["timeline"] for r in records]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert pngs[0].read_bytes() != pngs[2].read_bytes()


def test_no_logger_still_writes_files_and_nothing_without_a_stage_dir(tmp_path, rows, track):
    assert tracking.log_rollout_table(None, rows[:1], 1, None) is None
    assert tracking.log_transition_plot(False, curve(track), 1, None) == []
    assert tracking.log_rollout_table(None, [], 1, tmp_path) is None
    assert tracking.log_transition_plot(None, [], 1, tmp_path) == []
    assert tracking.log_reward_histograms(None, {"TSG": []}, 1, tmp_path) is None
    assert not any(tmp_path.iterdir())
    out = tracking.log_rollout_table(False, rows[:1], 1, tmp_path, key="val/rollouts")
    assert (out / "rows.csv").is_file() and out.parent.name == "rollouts"


def test_csv_histograms_and_transition_plots(tmp_path, track):
    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    values = tracking.group_by_task(["tsg", "TSG", "MTR"], [0.25, 0.75, 1.0])
    assert values == {"TSG": [0.25, 0.75], "MTR": [1.0]}
    png = tracking.log_reward_histograms(logger, values, 3, tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((png.parent / "values.json").read_text()) == values
    logger.save()
    metrics = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    assert float(metrics[0]["rewards/by_task/TSG_mean"]) == pytest.approx(0.5)
    a = tracking.log_transition_plot(logger, curve(track, 0.5), 3, tmp_path)
    b = tracking.log_transition_plot(logger, [curve(track, 0.9)], 4, tmp_path)
    assert a[0].name == f"00_{track.id}.png" and a[0].read_bytes() != b[0].read_bytes()


def test_wandb_offline_run_holds_table_audio_images_and_histograms(tmp_path, monkeypatch, rows, track):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    logger = WandbLogger(project="must-test", save_dir=str(tmp_path), offline=True)
    assert tracking.log_rollout_table(logger, rows, 5, tmp_path / "stage") is None
    tracking.log_reward_histograms(logger, {"TSG": [0.1, 0.9], "MTR": [0.4]}, 5, tmp_path / "stage")
    tracking.log_transition_plot(logger, [curve(track)], 5, tmp_path / "stage")
    tracking.log_resolved_config(logger, {"recipe": {"name": "tiny"}})
    logger.experiment.finish()
    assert not (tmp_path / "stage").exists()  # W&B got everything; no duplicate files
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    (table,) = (media / "table").glob("rollouts_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:6] == ["step", "track_id", "task", "audio", "question", "reference"]
    assert "answer_3" in data["columns"] and "reward_3" in data["columns"] and "timeline" in data["columns"]
    assert len(data["data"]) == 3 and [r[2] for r in data["data"]] == ["TSG", "LTR", "MTR"]
    assert list((media / "audio").rglob("*.wav"))  # the track (one file: the rows share it)
    timelines = list((media / "images" / "rollouts").glob("timeline_*.png"))
    assert len(timelines) == 3
    assert list((media / "images" / "val").glob("transitions_*.png"))
    history = run_bytes(run, b"rewards/by_task")
    assert b"rewards/by_task/TSG" in history and b"trainer/global_step" in history


def test_resolved_config_goes_to_the_csv_hparams(tmp_path):
    from must.config import RecipeConfig

    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    tracking.log_resolved_config(logger, RecipeConfig(name="tiny", seed=3))
    logger.save()
    text = (tmp_path / "logs" / "hparams.yaml").read_text()
    assert "name: tiny" in text and "seed: 3" in text and "stages: []" in text


def test_histogram_means_reach_the_csv_logger_beside_wandb(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    wandb_logger = WandbLogger(project="must-test", save_dir=str(tmp_path), offline=True)
    csv_logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="")
    assert tracking.log_reward_histograms([wandb_logger, csv_logger], {"TSG": [0.2, 0.6]}, 4, tmp_path) is None
    wandb_logger.experiment.finish()
    csv_logger.save()
    (row,) = csv.DictReader((tmp_path / "logs" / "metrics.csv").open())
    assert float(row["rewards/by_task/TSG_mean"]) == pytest.approx(0.4) and row["step"] == "4"
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert b"rewards/by_task/TSG" in run_bytes(run, b"rewards/by_task/TSG")
    assert not (tmp_path / "media").exists()  # the histogram itself went to W&B
