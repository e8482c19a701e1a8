"""Stages 1-3 with a tiny model, chained by the runner: what trains moves, what is frozen does not, each
stage starts from the previous stage's weights (checked by value), SFT's evaluate writes scores.json."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from must.config import load_recipe
from must.models.lalm import MusicLALM
from must.rewards import score_completion
from must.runner import run_recipe, stage_seed
from tests._tiny import TINY_MODEL as _TINY

# The shared tiny model, with the source-activity head stage 1 trains.
TINY_MODEL = {**_TINY, "encoder": {**_TINY["encoder"], "num_sources": 8}}
TINY_DATA = {"min_seconds": 8, "max_seconds": 12, "train_tracks": 4, "val_tracks": 2, "test_tracks": 2}
TRAINER = {"max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False, "limit_val_batches": 1}


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "chain", "seed": 0, "output_dir": str(tmp_path / "out"), "logger": {"kind": "csv"},
        "model": TINY_MODEL, "data": TINY_DATA,
        "stages": [
            {"name": "enc", "kind": "encoder_adapt", "options": {"batch_size": 2, "lr": 1e-2},
             "trainer": {**TRAINER, "val_check_interval": 2}},
            {"name": "cap", "kind": "lm_adapt", "init_from": "enc", "options": {"batch_size": 2, "lr": 1e-2},
             "trainer": TRAINER},
            {"name": "sft", "kind": "sft", "init_from": "cap",
             "options": {"batch_size": 2, "questions_per_clip": 3, "lr": 1e-2, "eval_max_new_tokens": 4},
             "trainer": {**TRAINER, "val_check_interval": 2}},
        ],
    }
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _state(folder: Path) -> dict[str, torch.Tensor]:
    model = MusicLALM.from_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _moved(a: dict, b: dict, prefix: str, contains: str = "", excluding: str | None = None) -> tuple[int, int]:
    """(moved, total) parameters whose names start with ``prefix`` and contain ``contains``."""
    keys = [k for k in a if k.startswith(prefix) and contains in k and (excluding is None or excluding not in k)]
    moved = sum(not torch.equal(a[k], b[k]) for k in keys)
    return moved, len(keys)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    recipe = load_recipe(_recipe(tmp))
    L.seed_everything(stage_seed(recipe.seed, "enc"), verbose=False)  # as the runner seeds stage 1
    init = MusicLALM.from_config(recipe.model)
    init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    records = run_recipe(recipe)
    out = Path(recipe.output_dir)
    states = {name: _state(out / name / "model") for name in ("enc", "cap", "sft")}
    return init_state, states, records, out


def test_stage1_trains_encoder_only(chain):
    init, states, records, out = chain
    enc = states["enc"]
    assert records["enc"]["status"] == "finished"
    for head in ("encoder.transition_head.", "encoder.mood_head.", "encoder.source_head.", "encoder.backbone."):
        moved, total = _moved(init, enc, head)
        assert total > 0 and moved > 0, head
    assert _moved(init, enc, "llm.")[0] == 0
    assert _moved(init, enc, "projector.")[0] == 0
    m = records["enc"]["metrics"]
    # the loss is the weighted sum of its three parts (weights 1.0 by default)
    parts = m["train/transition_loss"] + m["train/mood_loss"] + m["train/source_loss"]
    assert m["train/loss"] == pytest.approx(parts, rel=1e-5) and min(
        m["train/transition_loss"], m["train/mood_loss"], m["train/source_loss"]) > 0
    assert 0.0 <= m["val/boundary_f1_1s"] <= m["val/boundary_f1_3s"] <= 1.0  # a wider tolerance finds more
    assert 0.0 <= m["val/source_f1"] <= 1.0 and m["val/mood_mae"] >= 0.0


def test_stage2_starts_from_stage1_and_keeps_encoder_frozen(chain):
    _, states, records, _ = chain
    enc, cap = states["enc"], states["cap"]
    encoder_keys = [k for k in enc if k.startswith("encoder.")]
    assert all(torch.equal(enc[k], cap[k]) for k in encoder_keys)  # loaded by value, then frozen
    assert _moved(enc, cap, "projector.")[0] > 0
    moved, total = _moved(enc, cap, "llm.", excluding="lora_")
    assert moved > 0
    assert _moved(enc, cap, "llm.", contains="lora_")[0] == 0  # adapters wait for SFT
    m = records["cap"]["metrics"]
    assert m["train/loss"] == m["train/caption_loss"] > 0.0  # captions are stage 2's only loss


def test_stage3_trains_lora_and_projector_only(chain):
    _, states, records, _ = chain
    cap, sft = states["cap"], states["sft"]
    assert _moved(cap, sft, "llm.", contains="lora_B")[0] > 0
    assert _moved(cap, sft, "projector.")[0] > 0
    assert _moved(cap, sft, "llm.", excluding="lora_")[0] == 0
    assert _moved(cap, sft, "encoder.")[0] == 0
    m = records["sft"]["metrics"]
    per_task = {k.removeprefix("train/loss_"): v for k, v in m.items() if k.startswith("train/loss_")}
    assert set(per_task) <= {"TSG", "LTR", "TAD", "GTO", "MTR"} and len(per_task) >= 2
    # the step's loss averages the tasks' losses, so it lies between them
    assert min(per_task.values()) <= m["train/loss"] <= max(per_task.values())
    assert m["train/questions"] >= len(per_task)  # at least one question per task it logged


def test_records_chain_the_stages(chain):
    """Each record names the folder it started from, its own seed and steps; record.json is the record, and
    its metrics are the last ones the csv logger wrote."""
    _, _, records, out = chain
    assert list(records) == ["enc", "cap", "sft"]
    previous = None
    for name, rec in records.items():
        assert rec["status"] == "finished" and rec["global_step"] == TRAINER["max_steps"]
        assert rec["seed"] == stage_seed(0, name) and rec["model_dir"] == str(out / name / "model")
        assert rec["init_from"] == (None if previous is None else str(out / previous / "model"))
        assert json.loads((out / name / "record.json").read_text()) == rec
        with open(out / name / "logs" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        last = next(r for r in reversed(rows) if r["train/loss"])
        assert float(last["train/loss"]) == pytest.approx(rec["metrics"]["train/loss"])
        previous = name
    assert len({rec["config_hash"] for rec in records.values()}) == 3


def test_sft_evaluate_writes_scores_json(chain):
    _, _, records, out = chain
    scores = json.loads((out / "sft" / "eval" / "scores.json").read_text())
    rows = scores["rows"]
    predictions = [json.loads(line) for line in (out / "sft" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in predictions]
    assert [r["prediction"] for r in rows] == [p["prediction"] for p in predictions]
    # each sub-metric is the mean of its rows' values; a task's score the mean of its sub-metrics
    sub = {("TSG", "onset"): "tsg_onset", ("LTR", "accuracy"): "ltr", ("TAD", "meteor"): "tad_meteor",
           ("MTR", "iou"): "mtr_iou", ("MTR", "f1"): "mtr_f1"}
    measured = []
    for (task, key), column in sub.items():
        values = [r[column] for r in rows if column in r]
        assert values, column
        assert scores[task][key] == pytest.approx(sum(values) / len(values), abs=0.01), column
        measured.append(scores[task][key])
    for task in ("TSG", "LTR", "TAD", "MTR"):
        parts = [v for k, v in scores[task].items() if k != "score" and v is not None]
        assert scores[task]["score"] == pytest.approx(sum(parts) / len(parts), abs=0.01), task
    # overall: the mean of the measured sub-metrics (GTO, TSG offset and CLAP are not in this test split)
    assert {"tsg_offset", "tad_clap", "gto"} <= set(scores["missing"])
    assert scores["overall"] == pytest.approx(sum(measured) / len(measured), abs=0.01)
    base = scores["baseline"]
    base_parts = [base["TSG"]["onset"], base["LTR"]["accuracy"], base["MTR"]["iou"], base["MTR"]["f1"]]
    assert base["overall"] == pytest.approx(sum(base_parts) / len(base_parts), abs=0.01)
    assert records["sft"]["eval"]["test"]["overall"] == pytest.approx(scores["overall"])
    assert records["sft"]["eval"]["test"]["ltr"] == pytest.approx(scores["LTR"]["accuracy"])


def test_validation_logs_transition_plots_and_rollout_tables(chain):
    """With the csv logger, stage 1's transition curves and SFT's answered questions land as files."""
    _, _, records, out = chain
    curves = list((out / "enc" / "media").rglob("*.png"))
    assert curves and all(p.stat().st_size > 1000 for p in curves)
    (table,) = (out / "sft" / "media" / "val" / "rollouts").glob("step_*")
    with open(table / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = [row["task"] for row in rows]
    assert rows and len(set(tasks)) == len(tasks)  # one answered question per task
    for row in rows:
        assert (table / row["timeline"]).stat().st_size > 1000 and (table / row["audio"]).stat().st_size > 1000
    # each answer's reward components are what the reward function gives it against the reference
    for line in (table / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        for answer, logged in zip(row["answers"], row["rewards"], strict=True):
            want = score_completion(row["task"], answer, row["reference"][0], row["reference"], row["duration"])
            assert logged == pytest.approx(want), (row["task"], answer)
    m = records["sft"]["metrics"]
    val = {k.removeprefix("val/"): v for k, v in m.items() if k.startswith("val/")}
    assert val["overall"] == pytest.approx(sum(v for k, v in val.items() if k != "overall") / (len(val) - 1), abs=0.01)
