"""``must eval`` on stock Hugging Face audio LLMs (Qwen2-Audio, the Qwen2.5-Omni thinker): tiny random models of
the real classes, through their own processor and chat template, on the real fixture track, scored by the same
path as a must model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from must.cli import main
from tests._fixtures import DEMO as FIXTURE
from tests._fixtures import needs_fixture as _needs
from tests._hub import cached_snapshot
from tests._stock import OMNI_TEMPLATE, save_full_omni, save_omni_thinker, save_qwen2_audio

needs_fixture = _needs("mustbench_demo", "1023323.mp3")
SR = 16000


def _bench(tmp_path: Path) -> Path:
    """The real MTR row and its real track, plus one question of each other task on the same track."""
    audio = tmp_path / "audio"
    audio.mkdir()
    shutil.copy(FIXTURE / "1023323.mp3", audio / "1023323.mp3")
    row = dict(track_id="1023323", category=None, qa_type=None, split="test")
    extra = pd.DataFrame([
        {**row, "id": "tsg-on", "task": "TSG", "qa_type": "onset", "category": "vocals",
         "question": "When do the vocals first appear?", "answer": "0:12", "answers": ["0:12"]},
        {**row, "id": "ltr", "task": "LTR", "question": "What change happens at 0:57? A. drums enter B. the music "
         "gets louder C. the vocals stop D. the key changes", "answer": "B", "answers": ["B"]},
        {**row, "id": "gto", "task": "GTO", "question": "Order these changes: X. louder Y. quieter Z. vocals enter. "
         "A. X→Y→Z B. X→Z→Y C. Y→X→Z D. Y→Z→X E. Z→X→Y F. Z→Y→X", "answer": "E", "answers": ["E"]},
        {**row, "id": "tad", "task": "TAD", "question": "Describe the change at 0:57.",
         "answer": "the music becomes louder and more intense", "answers": ["the music becomes louder and more intense"]},
    ])
    data = audio / "bench.parquet"
    pd.concat([pd.read_parquet(FIXTURE / "mustbench_demo.parquet"), extra], ignore_index=True).to_parquet(data)
    return data


def _check_run(out: Path, data: Path, name: str) -> None:
    ids = pd.read_parquet(data)["id"].tolist()
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ids  # one row per question, in the benchmark's order
    for p in preds:
        assert p["error"] is None and isinstance(p["prediction"], str), p
        assert p["duration"] == pytest.approx(97.4, abs=0.1)
        assert p["covered_seconds"] == pytest.approx(p["duration"], abs=0.05)  # every window heard
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["TSG"]) == {"onset", "offset", "score"} and scores["TSG"]["offset"] is None
    assert set(scores["MTR"]) == {"iou", "f1", "score"}
    (mtr,) = [r for r in scores["rows"] if r["task"] == "MTR"]
    assert scores["MTR"]["iou"] == pytest.approx(mtr["mtr_iou"], abs=0.01) and 0.0 <= mtr["mtr_iou"] <= 100.0
    assert scores["LTR"]["accuracy"] in (0.0, 100.0) and scores["GTO"]["accuracy"] in (0.0, 100.0)
    (tad,) = [r for r in scores["rows"] if r["task"] == "TAD"]
    assert scores["TAD"]["meteor"] == pytest.approx(tad["tad_meteor"], abs=0.01)
    # overall: the mean of the sub-metrics measured here (TSG offset and CLAP are not)
    measured = [scores["TSG"]["onset"], scores["LTR"]["accuracy"], scores["TAD"]["meteor"], scores["GTO"]["accuracy"],
                scores["MTR"]["iou"], scores["MTR"]["f1"]]
    assert scores["overall"] == pytest.approx(sum(measured) / len(measured), abs=0.01)
    assert len(scores["rows"]) == len(ids) and scores["missing_predictions"] == []
    assert f"# MusTBench evaluation: {name}" in (out / "report.md").read_text()


@needs_fixture
def test_must_eval_runs_a_stock_qwen2_audio_folder_end_to_end(tmp_path, capsys):
    folder = save_qwen2_audio(tmp_path / "qwen2-audio-tiny")
    data = _bench(tmp_path)
    out = tmp_path / "out"
    code = main(["eval", str(folder), "--data", str(data), "--out", str(out), "--max-new-tokens", "6"])
    assert code == 0, capsys.readouterr().err
    _check_run(out, data, "qwen2-audio-tiny")


@needs_fixture
def test_must_eval_runs_a_cached_qwen2_5_omni_hub_id_through_its_thinker(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    data = _bench(tmp_path)
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--max-new-tokens", "6", "--batch-size", "3"]
    assert main(["eval", "Qwen/Qwen2.5-Omni-7B", *args]) == 2  # not cached yet
    err = capsys.readouterr().err
    assert "'Qwen/Qwen2.5-Omni-7B' is no local folder" in err and "`hf download Qwen/Qwen2.5-Omni-7B`" in err
    save_full_omni(cached_snapshot(cache, "Qwen/Qwen2.5-Omni-7B"))
    assert main(["eval", "Qwen/Qwen2.5-Omni-7B", *args]) == 0, capsys.readouterr().err
    _check_run(tmp_path / "out", data, "Qwen2.5-Omni-7B")


def test_the_processor_hears_every_window_and_batching_changes_no_answer(tmp_path):
    from must.eval_hf import load_stock

    model = load_stock(save_qwen2_audio(tmp_path / "m"))
    assert type(model.processor).__name__ == "Qwen2AudioProcessor"  # the folder's own processor
    wave = (np.random.default_rng(0).standard_normal(70 * SR) * 0.1).astype(np.float32)
    audio = model.encode_audio([wave], SR)
    assert [len(w) / SR for w in audio.windows[0]] == [30.0, 30.0, 10.0]
    batch = model.inputs(audio.index_select([0, 0]), ["When does the bass enter?", "Which change?"])
    assert batch["input_features"].shape[0] == 6  # 3 windows per question
    audio_id = model.processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert (batch["input_ids"] == audio_id).sum(-1).tolist() == [750 + 750 + 250] * 2  # 25 tokens a second
    prompt = model.processor.tokenizer.decode(batch["input_ids"][0])
    assert "Audio 3: <|audio_bos|>" in prompt and prompt.endswith("When does the bass enter?<|im_end|>\n"
                                                                  "<|im_start|>assistant\n")
    both = model.generate(audio.index_select([0, 0]), ["When does the bass enter?", "Which change?"], 5)
    alone = [model.generate(audio, [q], 5)[0] for q in ["When does the bass enter?", "Which change?"]]
    assert both == alone  # left padding: a batched answer is the answer alone


def test_omni_without_torchvision_builds_the_inputs_its_processor_would(tmp_path, monkeypatch):
    """Qwen2_5OmniProcessor cannot be built without torchvision (its video half); the audio-only stand-in gives
    the very inputs the real processor gives (built here with its class check switched off)."""
    from transformers import AutoTokenizer, Qwen2_5OmniProcessor, WhisperFeatureExtractor
    from transformers.processing_utils import ProcessorMixin

    from must.eval_hf import load_stock

    folder = save_omni_thinker(tmp_path / "thinker")
    model = load_stock(folder)
    assert type(model.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    real = Qwen2_5OmniProcessor(image_processor=None, video_processor=None,
                                feature_extractor=WhisperFeatureExtractor.from_pretrained(str(folder)),
                                tokenizer=AutoTokenizer.from_pretrained(str(folder)), chat_template=OMNI_TEMPLATE)
    wave = (np.random.default_rng(0).standard_normal(45 * SR) * 0.1).astype(np.float32)
    audio = model.encode_audio([wave], SR).index_select([0, 0])
    questions = ["When does the bass enter?", "Which?"]
    ours = model.inputs(audio, questions)
    theirs = real(text=[model.prompt(2, q) for q in questions], audio=[w for ws in audio.windows for w in ws],
                  return_tensors="pt", padding=True)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_full_omni_folder_loads_its_thinkers_weights(tmp_path):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from must.eval_hf import load_stock, stock_kind

    thinker = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(str(save_omni_thinker(tmp_path / "t")))
    full = save_full_omni(tmp_path / "full")
    assert stock_kind(full) == "qwen2_5_omni" and stock_kind(tmp_path / "t") == "qwen2_5_omni_thinker"
    model = load_stock(full).model
    assert torch.equal(model.lm_head.weight, thinker.lm_head.weight)
    name = "model.audio_tower.conv1.weight"
    assert torch.equal(model.state_dict()[name], thinker.state_dict()[name])


def test_a_must_model_folder_is_not_taken_for_a_stock_one(tmp_path):
    from must.eval_hf import load_for_eval, stock_kind
    from must.models.lalm import MusicLALM
    from tests._tiny import TINY_MODEL

    folder = MusicLALM.from_config(TINY_MODEL).save_pretrained(tmp_path / "must")
    assert stock_kind(folder) is None and stock_kind(folder / "llm") is None  # a Qwen2 LLM is no audio LLM
    assert isinstance(load_for_eval(folder), MusicLALM)
