"""A ``grpo`` stage through the real recipe runner: from_context, fit, save_model, evaluate; what it trains
moves (by value, saved folder against the starting one), what is frozen does not."""

import csv
import json

import pytest
import torch

from must.config import load_recipe
from must.models.lalm import MusicLALM
from must.runner import run_recipe

G = 4  # sampled answers per question
RECIPE = """
name: grpo-only
seed: 3
output_dir: {out}
logger: {{kind: none}}
model:
  llm: {{lora: {{r: 4}}}}
data: {{min_seconds: 20, max_seconds: 22, train_tracks: 3, val_tracks: 1, test_tracks: 1, questions_per_track: 2}}
stages:
  - name: rl
    kind: grpo
{init}    # 16 tokens and group refills, so a random policy's answers differ in reward within some group: with 5
    # tokens and no refills a seed can leave every group agreeing (zero advantages, no weight moves).
    options: {{batch_size: 1, questions_per_clip: 2, num_generations: 4, max_completion_length: 16,
               max_refills: 3, num_iterations: 2, lr: 0.01}}
    trainer: {{max_steps: 2, enable_progress_bar: false, checkpoint_every_n_steps: 1}}
"""


def _state(folder) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in MusicLALM.from_pretrained(folder).state_dict().items()}


def test_grpo_stage_runs_from_a_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run", init=""))
    # The starting folder, kept to compare against: the recipe's model built from config.
    MusicLALM.from_config(load_recipe(path).model).save_pretrained(tmp_path / "start")
    path.write_text(RECIPE.format(out=tmp_path / "run", init=f"    init_from: {tmp_path / 'start'}\n"))
    records = run_recipe(load_recipe(path))
    rec = records["rl"]
    assert rec["status"] == "finished" and rec["global_step"] == 2
    assert rec["init_from"] == str(tmp_path / "start")
    stage_dir = tmp_path / "run" / "rl"

    # What trains moved, and nothing else: the LLM's LoRA, the projector and the time embedding (grpo's
    # default, as SFT); the LLM's base weights and the music encoder are exactly the starting ones.
    start, end = _state(tmp_path / "start"), _state(stage_dir / "model")
    assert start.keys() == end.keys()
    lora = {k for k in start if "lora_" in k}
    assert lora and all(k.startswith("llm.") for k in lora)
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    trained = lora | {k for k in start if k.startswith(("projector.", "time_embedding."))}
    assert moved == trained, sorted(moved ^ trained)

    metrics = rec["metrics"]
    # the kept batch carried signal (frac_reward_zero_std is the first draw's, before the refills)
    assert metrics["train/loss"] != 0.0 and 0.0 <= metrics["frac_reward_zero_std"] <= 1.0
    assert 0.0 <= metrics["valid_format"] <= 1.0 and metrics["rewards/must_reward"] == metrics["reward"]
    scores = json.loads((stage_dir / "eval" / "scores.json").read_text())
    assert rec["eval"]["test"]["overall"] == pytest.approx(scores["overall"])
    assert 0.0 <= scores["overall"] <= 100.0
    saved = torch.load(stage_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2

    # The first rollout batch's table (log_rollouts_every_n_steps=10): with no logger, files in the stage dir.
    (table,) = (stage_dir / "media" / "rollouts").glob("step_*")
    with open(table / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * G  # 2 questions x G sampled answers
    for q in {r["row"] for r in rows}:
        assert sorted(int(r["sample"]) for r in rows if r["row"] == q) == list(range(G))
    # one reward function of weight 1: each answer's total is its must_reward, within [-1, 1]
    for r in rows:
        assert float(r["total"]) == pytest.approx(float(r["must_reward"])) and -1.0 <= float(r["total"]) <= 1.0
        assert (table / r["timeline"]).stat().st_size > 1000 and (table / r["audio"]).stat().st_size > 1000
