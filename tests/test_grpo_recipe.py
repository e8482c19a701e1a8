"""A ``grpo`` stage through the real recipe runner: from_context, fit, save_model, evaluate."""

import json

import torch

from must.config import load_recipe
from must.models.lalm import MusicLALM
from must.runner import run_recipe

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
    options: {{batch_size: 1, questions_per_clip: 2, num_generations: 3, max_completion_length: 5,
               num_iterations: 2, lr: 0.01, refill_groups: false}}
    trainer: {{max_steps: 2, enable_progress_bar: false, checkpoint_every_n_steps: 1}}
"""


def test_grpo_stage_runs_from_a_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(out=tmp_path / "run"))
    records = run_recipe(load_recipe(path))
    rec = records["rl"]
    assert rec["status"] == "finished" and rec["global_step"] == 2
    assert "reward" in rec["metrics"] and "valid_format" in rec["metrics"]
    stage_dir = tmp_path / "run" / "rl"
    scores = json.loads((stage_dir / "eval" / "scores.json").read_text())
    assert "overall" in scores and rec["eval"]["test"]["overall"] == scores["overall"]
    model = MusicLALM.from_pretrained(stage_dir / "model")
    assert any("lora_" in n for n, _ in model.named_parameters())
    saved = torch.load(stage_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    # The first rollout batch's table (log_rollouts_every_n_steps=10): with no logger, files in the stage dir.
    (table,) = (stage_dir / "media" / "rollouts").glob("step_*")
    lines = (table / "rows.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 3  # header + 2 questions x 3 sampled answers
    assert "total" in lines[0] and list(table.glob("timeline/*.png")) and list(table.glob("audio/*.flac"))
