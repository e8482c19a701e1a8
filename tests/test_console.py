"""What ``must run`` shows: library noise in run.log (not the terminal), status lines at their interval with
the Trainer's step counts, and the closing summary; W&B offline runs hold the stage's media beside the CSV."""

from __future__ import annotations

import csv
import json
import logging
import re
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from must import console
from must.config import load_recipe
from must.runner import run_recipe, wandb_mode
from tests._stages import Producer
from tests._wandb import run_bytes


class NoisyProducer(Producer):
    """The toy stage, plus what libraries do during a real stage: a UserWarning and a transformers warning."""

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            warnings.warn("toy stage: a library UserWarning", UserWarning, stacklevel=1)
            logging.getLogger("transformers.generation.utils").warning("toy: generation flags are not valid")
        return super().training_step(batch, batch_idx)


def _toy_recipe(tmp_path: Path, logger: str = "csv", steps: int = 6) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(textwrap.dedent(f"""
        name: toy
        output_dir: {tmp_path / "out"}
        logger: {{kind: {logger}}}
        stages:
          - name: a
            kind: tests.test_console:NoisyProducer
            trainer: {{max_steps: {steps}, log_every_n_steps: 1, enable_progress_bar: false}}
    """))
    return path


# ----------------------------------------------------------------------------------------- status lines


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trainer(step: int = 0, max_steps: int = 10, **metrics) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, global_step=step, max_steps=max_steps, progress_bar_metrics=metrics)


def test_status_lines_come_at_their_interval_with_step_loss_elapsed_and_eta(capsys):
    clock = FakeClock()
    progress = console.StageProgress("sft", every=5.0, bar=False, clock=clock)
    trainer = _trainer(max_steps=10)
    progress.on_train_start(trainer, None)
    for step in range(1, 11):  # a step every 2 s, a line once 5 s passed since the last: 6 s, 12 s, 18 s
        clock.now += 2.0
        trainer.global_step = step
        trainer.progress_bar_metrics = {"train/loss": 2.0 / step}
        progress.on_train_batch_end(trainer, None, None, None, step - 1)
    out = capsys.readouterr().out.splitlines()
    assert out == progress.lines
    assert [line.split("  ")[1] for line in out] == ["step 3/10", "step 6/10", "step 9/10"]
    assert out[0] == "[must] sft  step 3/10  loss 0.6667  elapsed 0:06  eta 0:14"
    assert out[1].endswith("loss 0.3333  elapsed 0:12  eta 0:08")


def test_status_eta_of_a_resumed_stage_counts_from_its_checkpoint_step(capsys):
    clock = FakeClock()
    progress = console.StageProgress("grpo", every=1.0, bar=False, clock=clock)
    trainer = _trainer(step=40, max_steps=100, reward=0.25, loss=-0.01)
    progress.on_train_start(trainer, None)
    clock.now += 30.0
    trainer.global_step = 50  # 10 steps in 30 s, 50 to go: 150 s
    progress.on_train_batch_end(trainer, None, None, None, 0)
    assert capsys.readouterr().out.strip() == \
        "[must] grpo  step 50/100  reward 0.25  loss -0.01  elapsed 0:30  eta 2:30"


def test_progress_bar_on_a_terminal_follows_the_global_step(tmp_path):
    stream = (tmp_path / "bar.txt").open("w+")
    progress = console.StageProgress("enc", bar=True, stream=stream)
    trainer = _trainer(step=2, max_steps=8)
    progress.on_train_start(trainer, None)
    trainer.global_step = 6
    trainer.progress_bar_metrics = {"train/loss": 0.5}
    progress.on_train_batch_end(trainer, None, None, None, 0)
    assert progress._tqdm.n == 6 and progress._tqdm.total == 8
    progress.close()
    stream.seek(0)
    text = stream.read()
    assert "enc" in text and "6/8" in text and "loss 0.5" in text
    assert progress.lines == []  # a bar, no status lines


def test_clock_text():
    assert [console.clock_text(s) for s in (0, 59.6, 75, 3725, None)] == ["0:00", "1:00", "1:15", "1:02:05", "--"]


# ----------------------------------------------------------------------------------------- library noise


def test_library_noise_goes_to_the_log_file_and_everything_is_restored(tmp_path, capsys):
    from lightning.pytorch.utilities import rank_zero_info

    pl_logger = logging.getLogger("lightning.pytorch")
    handlers_before = pl_logger.handlers[:]
    with console.LibraryNoise(tmp_path / "run.log") as noise:
        rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try installing litmodels")
        warnings.warn("The 'train_dataloader' does not have many workers", UserWarning, stacklevel=1)
        logging.getLogger("transformers").error("a real library error")
        print("[must] our own line")
    captured = capsys.readouterr()
    assert "Tip" not in captured.out + captured.err and "many workers" not in captured.out + captured.err
    assert "[must] our own line" in captured.out and "a real library error" in captured.err  # errors still show
    text = (tmp_path / "run.log").read_text()
    assert "lightning.pytorch.utilities.rank_zero INFO: 💡 Tip: For seamless cloud uploads" in text
    assert "UserWarning: The 'train_dataloader' does not have many workers" in text
    assert (noise.hidden, noise.warnings) == (3, 1)
    assert noise.summary() == f"3 library messages hidden (1 warning), see {tmp_path / 'run.log'}"
    assert pl_logger.handlers == handlers_before
    with pytest.warns(UserWarning, match="after the run"):  # warnings reach the caller again
        warnings.warn("after the run", UserWarning, stacklevel=1)


def test_a_run_keeps_banners_and_warnings_in_run_log_and_says_how_many(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MUST_STATUS_SECONDS", "0")  # a status line after every step
    records = run_recipe(load_recipe(_toy_recipe(tmp_path)))
    out = capsys.readouterr()
    shown = out.out + out.err
    for noise in ("GPU available", "Tip:", "library UserWarning", "generation flags", "Total params"):
        assert noise not in shown, noise
    log = (tmp_path / "out" / "run.log").read_text()
    for noise in ("GPU available", "toy stage: a library UserWarning", "toy: generation flags are not valid",
                  "Total params"):
        assert noise in log, noise
    status = [line for line in out.out.splitlines() if line.startswith("[must] a  step")]
    assert [line.split("  ")[1] for line in status] == [f"step {i}/6" for i in range(1, 7)]
    assert records["a"]["status"] == "finished"
    summary = out.out[out.out.index("[must] summary of"):].splitlines()
    assert summary[1].split()[:3] == ["a", "finished", "step"] and "6/6" in summary[1]
    assert "model a/model" in summary[2] and "metrics a/logs/metrics.csv" in summary[2]
    hidden = re.fullmatch(r"(\d+) library messages hidden \((\d+) warnings?\), see (.+)", summary[-1].strip())
    assert hidden and int(hidden[1]) >= 4 and int(hidden[2]) >= 1 and hidden[3] == str(tmp_path / "out" / "run.log")


# ----------------------------------------------------------------------------------------- summary


def _record(name: str, seconds: float, step: int, max_steps: int, **extra) -> dict:
    return {"stage": name, "status": "finished", "seconds": seconds, "global_step": step,
            "config": {"trainer": {"max_steps": max_steps}}, "metrics": {}, "model_dir": f"/nowhere/{name}/model",
            **extra}


def test_summary_lists_each_stage_with_its_time_scores_and_outputs(tmp_path):
    out = tmp_path / "run"
    (out / "sft" / "model").mkdir(parents=True)
    (out / "sft" / "eval").mkdir()
    (out / "sft" / "eval" / "scores.json").write_text("{}")
    (out / "sft" / "logs").mkdir()
    (out / "sft" / "logs" / "metrics.csv").write_text("step\n")
    test = {"overall": 36.14, "tsg_onset": 40.0, "tsg_offset": 30.0, "ltr": 50.0, "tad_meteor": 12.5, "gto": 20.0,
            "mtr_iou": 54.6, "mtr_f1": 60.0, "baseline/ltr": 25.0}
    records = {
        "encoder": _record("encoder", 134.2, 80, 80, eval={"untrained": {"overall": 2.0}}),
        "captions": _record("captions", 434.0, 320, 320, metrics={"train/loss": 0.7012}),
        "sft": _record("sft", 95.0, 450, 450, eval={"test": test}, model_dir=str(out / "sft" / "model"),
                       wandb={"dir": str(out / "wandb" / "offline-run-x-sft"), "url": None, "group": "g"}),
        "grpo": {**_record("grpo", 12.0, 7, 15), "status": "failed", "error": "RuntimeError: out of memory\nmore"},
    }
    lines = console.summary_lines(records, out, ["encoder", "captions", "sft", "grpo", "extra"], skipped=["encoder"],
                                  hidden="12 library messages hidden (3 warnings), see run.log", total_seconds=700)
    text = "\n".join(lines)
    assert lines[0] == f"[must] summary of {out} (11:40)"
    enc = next(line for line in lines if line.strip().startswith("encoder"))
    assert enc.split()[:4] == ["encoder", "skipped", "step", "80/80"] and "untrained: overall 2.0" in enc
    cap = next(line for line in lines if line.strip().startswith("captions"))
    assert "7:14" in cap and "train/loss 0.7012" in cap
    sft = next(line for line in lines if line.strip().startswith("sft "))
    assert "1:35" in sft and "test: overall 36.1" in sft
    assert "(TSG on/off 40.0/30.0  LTR 50.0  TAD 12.5  GTO 20.0  MTR IoU/F1 54.6/60.0)" in sft
    assert "model sft/model  metrics sft/logs/metrics.csv  scores sft/eval/scores.json" in text
    grpo = lines.index(next(line for line in lines if line.strip().startswith("grpo")))
    assert lines[grpo].split()[:2] == ["grpo", "failed"] and lines[grpo + 1].strip() == "RuntimeError: out of memory"
    assert any(line.split() == ["extra", "not", "run"] for line in lines)
    assert f"W&B offline runs: {out / 'wandb'} (upload: wandb sync {out / 'wandb'}/offline-run-*)" in text
    assert lines[-1].strip() == "12 library messages hidden (3 warnings), see run.log"
    assert len(lines) <= 24  # one screen


# ----------------------------------------------------------------------------------------- W&B


GRPO_RECIPE = """
name: grpo-wandb
seed: 3
output_dir: {out}
logger: {{kind: wandb}}
model:
  llm: {{lora: {{r: 4}}}}
data: {{min_seconds: 20, max_seconds: 22, train_tracks: 3, val_tracks: 1, test_tracks: 1, questions_per_track: 2}}
stages:
  - name: rl
    kind: grpo
    options: {{batch_size: 1, questions_per_clip: 2, num_generations: 3, max_completion_length: 5,
               num_iterations: 1, lr: 0.01, refill_groups: false}}
    trainer: {{max_steps: 2, log_every_n_steps: 1, enable_progress_bar: false}}
"""


def test_wandb_offline_stage_run_holds_rollout_audio_and_timelines_beside_the_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("MUST_STATUS_SECONDS", "0")
    path = tmp_path / "recipe.yaml"
    path.write_text(GRPO_RECIPE.format(out=tmp_path / "run"))
    records = run_recipe(load_recipe(path))
    out = capsys.readouterr().out
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    assert records["rl"]["wandb"] == {"dir": str(run), "url": None, "group": records["rl"]["wandb"]["group"]}
    assert out.count(f"[must] stage 'rl': W&B offline run in {run}") == 1
    # GRPO optimises manually: the status lines still follow its optimizer steps, with its reward.
    status = [line for line in out.splitlines() if line.startswith("[must] rl  step")]
    assert [line.split("  ")[1] for line in status] == ["step 1/2", "step 2/2"] and "reward" in status[0]
    media = run / "files" / "media"
    assert list((media / "audio").rglob("*.wav")), "no rollout audio in the W&B run"
    assert len(list((media / "images" / "rollouts").glob("timeline_*.png"))) == 2  # 2 questions, one each
    (table,) = (media / "table").glob("rollouts_*.table.json")
    assert json.loads(table.read_text())["columns"][3] == "audio"
    history = run_bytes(run, b"rewards/by_task")
    assert b"reward" in history and b"rewards/by_task" in history
    assert not (tmp_path / "run" / "rl" / "media").exists()  # media went to W&B, not duplicated as files
    lines = (tmp_path / "run" / "rl" / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    # the step metrics and, beside W&B's histograms, their per-task means reach the CSV too
    assert "reward" in header and any(h.startswith("rewards/by_task/") for h in header), header
    steps = {row.split(",")[header.index("step")] for row in lines[1:]}
    assert len(steps) == 2, lines  # two optimizer steps
    assert f"W&B offline runs: {tmp_path / 'run' / 'wandb'}" in out


def test_wandb_mode_never_goes_online_unless_configured(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_mode("auto") == "online"  # `wandb login` wrote its key
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode("auto") == "offline"  # a key for another host is no key for this one
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == wandb_mode("online") == "offline"  # the environment wins over the recipe
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"


def test_wandb_disabled_keeps_the_csv_metrics_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    records = run_recipe(load_recipe(_toy_recipe(tmp_path, logger="wandb", steps=2)))
    assert "WANDB_MODE=disabled, so no W&B run" in capsys.readouterr().out
    assert not (tmp_path / "out" / "wandb").exists()
    # the csv still holds the training curve, and its last value is the record's
    with open(tmp_path / "out" / "a" / "logs" / "metrics.csv", newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert losses and losses[-1] == pytest.approx(records["a"]["metrics"]["train/loss"])
