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
    metrics = records["enc"]["metrics"]
    for key in ("train/loss", "train/transition_loss", "train/mood_loss", "train/source_loss",
                "val/boundary_f1_1s", "val/boundary_f1_3s", "val/mood_mae", "val/source_f1"):
        assert key in metrics, key


def test_stage2_starts_from_stage1_and_keeps_encoder_frozen(chain):
    _, states, records, _ = chain
    enc, cap = states["enc"], states["cap"]
    encoder_keys = [k for k in enc if k.startswith("encoder.")]
    assert all(torch.equal(enc[k], cap[k]) for k in encoder_keys)  # loaded by value, then frozen
    assert _moved(enc, cap, "projector.")[0] > 0
    moved, total = _moved(enc, cap, "llm.", excluding="lora_")
    assert moved > 0
    assert _moved(enc, cap, "llm.", contains="lora_")[0] == 0  # adapters wait for SFT
    assert "train/caption_loss" in records["cap"]["metrics"]


def test_stage3_trains_lora_and_projector_only(chain):
    _, states, records, _ = chain
    cap, sft = states["cap"], states["sft"]
    assert _moved(cap, sft, "llm.", contains="lora_B")[0] > 0
    assert _moved(cap, sft, "projector.")[0] > 0
    assert _moved(cap, sft, "llm.", excluding="lora_")[0] == 0
    assert _moved(cap, sft, "encoder.")[0] == 0
    assert any(k.startswith("train/loss_") for k in records["sft"]["metrics"])


def test_sft_evaluate_writes_scores_json(chain):
    _, _, records, out = chain
    scores = json.loads((out / "sft" / "eval" / "scores.json").read_text())
    for task in ("TSG", "LTR", "TAD", "MTR"):
        assert task in scores
    assert set(scores["baseline"]) >= {"TSG", "LTR", "MTR", "overall"}
    assert isinstance(scores["overall"], float)
    assert scores["rows"] and {"id", "task", "prediction"} <= set(scores["rows"][0])
    assert len(scores["rows"]) == len((out / "sft" / "eval" / "predictions.jsonl").read_text().splitlines())
    assert records["sft"]["eval"]["test"]["overall"] == pytest.approx(scores["overall"])


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
    assert list((table / "timeline").glob("*.png")) and list((table / "audio").glob("*.flac"))
    assert any(k.startswith("val/") for k in records["sft"]["metrics"])
