"""Crash and resume: ``kill -9`` in the middle of SFT and of GRPO, then ``must run --resume``.

Each test runs ``python -m must.cli run`` in a subprocess that pauses at a given global step (after a
checkpoint), kills it with SIGKILL, resumes it, and checks: the finished stage before it is skipped, the
resumed stage starts at the checkpoint's global step, finishes at max_steps, and ends with bit-identical
weights to an uninterrupted run with the same seed (which needs optimizer, scheduler, sampler and RNG
state all restored).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from must.models.lalm import MusicLALM
from tests._tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
MODEL = TINY_MODEL
DATA = {"min_seconds": 20, "max_seconds": 20, "train_tracks": 6, "val_tracks": 1, "test_tracks": 1,
        "questions_per_track": 4}
TRAINER = {"accelerator": "cpu", "devices": 1, "max_steps": 5, "checkpoint_every_n_steps": 2,
           "limit_val_batches": 0, "enable_progress_bar": False, "log_every_n_steps": 1}
FIRST = {"name": "cap", "kind": "lm_adapt", "options": {"batch_size": 1},
         "trainer": {**TRAINER, "max_steps": 1}}
STAGES = {
    "sft": {"name": "sft", "kind": "tests._scale_stages:ResumableSFT", "init_from": "cap",
            "options": {"batch_size": 2, "questions_per_clip": 3, "lr": 1e-2, "warmup_steps": 2,
                        "eval_max_tracks": 1, "eval_max_new_tokens": 2,
                        "train": ["projector.*", "time_embedding.*", "llm.*"], "freeze": ["*lora_*"]},
            "trainer": TRAINER},
    "grpo": {"name": "grpo", "kind": "tests._scale_stages:PausingGRPO", "init_from": "cap",
             "options": {"batch_size": 1, "questions_per_clip": 2, "num_generations": 3,
                         "max_completion_length": 4, "num_iterations": 2, "lr": 1e-2,
                         "refill_groups": True, "max_refills": 1},  # refill draws: test_grpo_stage
             "trainer": {**TRAINER, "max_steps": 8, "checkpoint_every_n_steps": 4}},
}


def _recipe(folder: Path, stage: str) -> Path:
    recipe = {"name": f"resume-{stage}", "seed": 5, "output_dir": str(folder / "out"), "logger": {"kind": "none"},
              "model": MODEL, "data": DATA, "stages": [FIRST, STAGES[stage]]}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _must(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "must.cli", "run", *args], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in MusicLALM.from_pretrained(stage_dir / "model").state_dict().items()}


def _kill_in_the_middle(recipe: Path, stage_dir: Path, pause_at: int) -> None:
    proc = _must(str(recipe), env={"MUST_TEST_PAUSE_AT": str(pause_at)})
    marker = stage_dir / "paused.json"
    deadline = time.time() + 600
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the pause: {proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, "the run never reached the pause step"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9: no handler, no cleanup
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("stage,pause_at,saved_at", [("sft", 3, 2), ("grpo", 6, 4)])
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, stage, pause_at, saved_at):
    # GRPO makes num_iterations (2) optimizer steps per batch of rollouts: its global step goes 0, 2, 4, 6, 8.
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    crashed.mkdir()
    clean.mkdir()
    recipe = _recipe(crashed, stage)
    stage_dir = crashed / "out" / stage
    _kill_in_the_middle(recipe, stage_dir, pause_at)

    record = json.loads((stage_dir / "record.json").read_text())
    assert record["status"] == "running"  # killed: nothing got to write "failed"
    ckpt = torch.load(stage_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == saved_at
    assert ckpt["optimizer_states"] and "RNGStateCallback" in json.dumps(list(ckpt["callbacks"]))
    if stage == "sft":
        assert ckpt["lr_schedulers"] and ckpt["lr_schedulers"][0]["last_epoch"] == saved_at

    # Without --resume the runner refuses to guess; with it, the finished stage is skipped and the
    # killed one continues from its checkpoint.
    refused = _must(str(recipe))
    out, _ = refused.communicate(timeout=300)
    assert refused.returncode == 2 and "pass --resume" in out
    out = _finish(_must(str(recipe), "--resume"))
    assert "stage 'cap': finished earlier with the same config, skipped" in out
    assert f"stage '{stage}': resuming from" in out
    assert json.loads((stage_dir / "starts.json").read_text()) == [0, saved_at]
    record = json.loads((stage_dir / "record.json").read_text())
    assert record["status"] == "finished" and record["global_step"] == STAGES[stage]["trainer"]["max_steps"]

    _finish(_must(str(_recipe(clean, stage))))
    resumed, straight = _weights(stage_dir), _weights(clean / "out" / stage)
    assert resumed.keys() == straight.keys()
    moved = 0
    start = _weights(crashed / "out" / "cap")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
        moved += not torch.equal(straight[key], start[key])
    assert moved > 0  # and training did change the weights
