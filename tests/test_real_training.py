"""SFT and GRPO on a MusTBench-format parquet (real files on disk): they train, evaluate the test split as
`must eval` does, and skip a broken audio file — counting it — or stop when more than the allowed fraction fail."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from must.config import load_recipe
from must.data.export import write_synthetic
from must.errors import ConfigError, MustError
from must.models.lalm import MusicLALM
from must.runner import run_recipe
from tests._tiny import TINY_MODEL

TRAINER = {"max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False, "limit_val_batches": 1,
           "val_check_interval": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Ten short tracks written as FLAC + parquet (8 train, 1 val, 1 test)."""
    out = tmp_path_factory.mktemp("real")
    write_synthetic(out, 10, seed=3, min_s=8, max_s=10, progress=False)
    return out


def _recipe(tmp_path: Path, folder: Path, steps: int = 2, **data) -> Path:
    recipe = {
        "name": "real", "seed": 0, "output_dir": str(tmp_path / "out"), "logger": {"kind": "csv"},
        "model": TINY_MODEL,
        "data": {"source": "mustbench", "parquet": str(folder / "mustbench.parquet"),
                 "audio_dir": str(folder / "audio"), **data},
        "stages": [{"name": "sft", "kind": "sft",
                    "options": {"batch_size": 2, "questions_per_clip": 3, "lr": 1e-2, "eval_max_new_tokens": 4},
                    "trainer": {**TRAINER, "max_steps": steps}}],
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _copy_with_broken(folder: Path, tmp_path: Path, n_broken: int) -> Path:
    """A copy of the audio folder where the first ``n_broken`` training files are garbage."""
    import pandas as pd

    audio = tmp_path / "audio"
    audio.mkdir()
    df = pd.read_parquet(folder / "mustbench.parquet")
    train_ids = sorted(df.loc[df["split"] == "train", "track_id"].astype(str).unique())
    for f in (folder / "audio").iterdir():
        target = audio / f.name
        target.write_bytes(b"not audio at all" if f.stem in train_ids[:n_broken] else f.read_bytes())
    return audio


def test_sft_trains_and_evaluates_on_a_parquet(folder, tmp_path):
    recipe = load_recipe(_recipe(tmp_path, folder))
    before = MusicLALM.from_config(recipe.model).state_dict()
    records = run_recipe(recipe)
    rec = records["sft"]
    assert rec["status"] == "finished"
    assert rec["metrics"]["train/broken_audio_files"] == 0
    out = Path(recipe.output_dir) / "sft"
    after = MusicLALM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    # the parquet's test rows, answered and scored as `must eval` does (report and predictions beside)
    import pandas as pd

    df = pd.read_parquet(folder / "mustbench.parquet")
    n_test = int((df["split"] == "test").sum())
    assert n_test > 0
    assert len((out / "eval" / "predictions.jsonl").read_text().splitlines()) == n_test
    scores = json.loads((out / "eval" / "scores.json").read_text())
    assert len(scores["rows"]) == n_test and 0.0 <= scores["overall"] <= 100.0
    assert rec["eval"]["test"]["overall"] == pytest.approx(scores["overall"])
    assert f"{scores['overall']:.1f}" in (out / "eval" / "report.md").read_text()  # the report states it


def test_grpo_trains_and_evaluates_on_a_parquet(folder, tmp_path):
    path = _recipe(tmp_path, folder)
    raw = yaml.safe_load(path.read_text())
    raw["stages"] = [{"name": "grpo", "kind": "grpo",
                      "options": {"batch_size": 2, "questions_per_clip": 2, "num_generations": 3,
                                  "max_completion_length": 4, "lr": 1e-2},
                      "trainer": {"max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False}}]
    path.write_text(yaml.safe_dump(raw))
    records = run_recipe(load_recipe(path))
    rec = records["grpo"]
    assert rec["status"] == "finished" and rec["global_step"] == 2
    # rewards come from the parquet's answer columns (a missing column would have raised in the router)
    assert math.isfinite(rec["metrics"]["reward"]) and 0.0 <= rec["metrics"]["valid_format"] <= 1.0
    # the parquet's test rows answered and scored, as for SFT
    import pandas as pd

    df = pd.read_parquet(folder / "mustbench.parquet")
    out = tmp_path / "out" / "grpo" / "eval"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == int((df["split"] == "test").sum())
    scores = json.loads((out / "scores.json").read_text())
    assert 0.0 <= scores["overall"] <= 100.0 and rec["eval"]["test"]["overall"] == pytest.approx(scores["overall"])


def test_a_broken_file_is_skipped_and_counted(folder, tmp_path):
    audio = _copy_with_broken(folder, tmp_path, 1)
    # 4 steps of 2 clips: one pass over the 8 training tracks, so the broken one is met
    recipe = load_recipe(_recipe(tmp_path, folder, steps=4, audio_dir=str(audio), max_broken_fraction=0.5))
    records = run_recipe(recipe)
    assert records["sft"]["status"] == "finished"
    assert records["sft"]["metrics"]["train/broken_audio_files"] == 1


def test_more_broken_files_than_allowed_stop_training_naming_them(folder, tmp_path):
    audio = _copy_with_broken(folder, tmp_path, 1)  # 1 of 8 training files: over the default 1 %
    recipe = load_recipe(_recipe(tmp_path, folder, steps=4, audio_dir=str(audio)))
    with pytest.raises(MustError, match=r"1 of 8 audio files failed to load \(more than 1%\): stopping.*\.flac"):
        run_recipe(recipe)


def test_a_missing_split_is_named(folder, tmp_path):
    recipe = load_recipe(_recipe(tmp_path, folder, train_split="training"))
    with pytest.raises(MustError, match=r"no rows with split 'training'.*splits present: \['test', 'train', 'val'\]"):
        run_recipe(recipe)


def test_stages_that_need_labels_refuse_a_parquet(folder, tmp_path):
    path = _recipe(tmp_path, folder)
    raw = yaml.safe_load(path.read_text())
    raw["stages"][0]["kind"] = "encoder_adapt"
    raw["stages"][0]["options"] = {}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"stage 'sft': data.source 'mustbench' is not supported by this stage"):
        run_recipe(load_recipe(path))
