"""The runner: chaining, records, skip/refuse, restart, resume at the saved step, loggers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from must.cli import main
from must.config import load_recipe
from must.errors import MustError
from must.runner import RunOptions, run_recipe
from tests._stages import toy_recipe


def recipe_file(tmp_path: Path, logger: str = "none", steps: int = 10, every: int = 5) -> Path:
    return toy_recipe(tmp_path,
                      {"name": "a", "kind": "tests._stages:Producer",
                       "trainer": {"max_steps": steps, "checkpoint_every_n_steps": every}},
                      {"name": "b", "kind": "tests._stages:Consumer", "init_from": "a", "trainer": {"max_steps": 3}},
                      logger=logger)


def test_stages_chain_and_write_records(tmp_path):
    records = run_recipe(load_recipe(recipe_file(tmp_path)))
    out = tmp_path / "out"
    a = json.loads((out / "a" / "record.json").read_text())
    assert a["status"] == "finished" and a["global_step"] == 10 and len(a["config_hash"]) == 16
    assert a["started_at"] and a["ended_at"] and a["metrics"]["train/loss"] >= 0
    # b really starts from a's saved weights: the sum it loaded equals the sum a saved.
    saved = torch.load(out / "a" / "model" / "weights.pt", weights_only=True)
    assert records["b"]["eval"]["test"]["loaded_sum"] == pytest.approx(float(sum(v.sum() for v in saved.values())))
    assert (out / "b" / "eval" / "scores.json").is_file()
    assert (out / "recipe.yaml").is_file()


def test_finished_stage_is_skipped_and_changed_one_refused(tmp_path, capsys):
    path = recipe_file(tmp_path)
    run_recipe(load_recipe(path))
    started = json.loads((tmp_path / "out" / "a" / "record.json").read_text())["started_at"]
    run_recipe(load_recipe(path))
    assert "finished earlier with the same config, skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "a" / "record.json").read_text())["started_at"] == started

    assert main(["run", str(path), "stages.a.options.lr=0.05"]) == 2
    assert "--restart a" in capsys.readouterr().err
    # A cosmetic change (logging cadence) does not force a rerun.
    run_recipe(load_recipe(path, ["stages.a.trainer.log_every_n_steps=1"]))


def test_restart_reruns_the_stage_and_later_ones(tmp_path):
    path = recipe_file(tmp_path)
    run_recipe(load_recipe(path))
    records = run_recipe(load_recipe(path, ["stages.a.options.lr=0.05"]), RunOptions(restart="a"))
    assert records["a"]["config"]["options"] == {"lr": 0.05}
    assert records["b"]["status"] == "finished"


def test_resume_continues_at_the_saved_global_step(tmp_path, monkeypatch):
    path = recipe_file(tmp_path, steps=10, every=5)
    monkeypatch.setenv("MUST_TEST_CRASH_AT", "7")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(load_recipe(path))
    stage_a = tmp_path / "out" / "a"
    assert json.loads((stage_a / "record.json").read_text())["status"] == "failed"
    assert (stage_a / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.delenv("MUST_TEST_CRASH_AT")
    with pytest.raises(MustError, match="pass --resume"):
        run_recipe(load_recipe(path))
    records = run_recipe(load_recipe(path), RunOptions(resume=True))
    assert json.loads((stage_a / "starts.json").read_text()) == [0, 5]
    assert records["a"]["global_step"] == 10 and records["b"]["status"] == "finished"
    # Same final weights as a run that was never interrupted (data order and RNG restored).
    resumed = torch.load(stage_a / "model" / "weights.pt", weights_only=True)
    clean = tmp_path / "clean"
    clean.mkdir()
    run_recipe(load_recipe(recipe_file(clean, steps=10, every=5)), RunOptions(only="a"))
    straight = torch.load(clean / "out" / "a" / "model" / "weights.pt", weights_only=True)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)


def test_only_and_from_pick_stages(tmp_path):
    path = recipe_file(tmp_path)
    records = run_recipe(load_recipe(path), RunOptions(only="a"))
    assert records["a"]["status"] == "finished" and "b" not in records
    records = run_recipe(load_recipe(path), RunOptions(from_stage="b"))
    assert records["b"]["status"] == "finished"


def test_only_a_stage_whose_upstream_never_ran_is_refused(tmp_path):
    with pytest.raises(MustError, match="has not finished"):
        run_recipe(load_recipe(recipe_file(tmp_path)), RunOptions(only="b"))


def test_csv_logger_writes_metrics(tmp_path):
    run_recipe(load_recipe(recipe_file(tmp_path, logger="csv"), ["stages.a.trainer.log_every_n_steps=1"]))
    lines = (tmp_path / "out" / "a" / "logs" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in lines[0] and len(lines) >= 10


def test_wandb_offline_logger_writes_a_run_per_stage(tmp_path):
    run_recipe(load_recipe(recipe_file(tmp_path, logger="wandb")))
    runs = sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run in runs:
        assert list(run.glob("*.wandb")), f"no W&B data file in {run}"
