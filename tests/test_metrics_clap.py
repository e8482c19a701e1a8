"""CLAP score from a local CLAP folder (a tiny random one built from config): identical text scores 100,
and ``must score --clap-dir`` fills ``TAD.clap``."""

import json

import pandas as pd
import pytest

from must.cli import main


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapModel

    from must.models.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=66, pad_token_id=tok.pad_token_id, projection_dim=16)
    audio = dict(hidden_size=32, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                 projection_dim=16, spec_size=64, num_mel_bins=16, window_size=4)
    path = tmp_path_factory.mktemp("clap")
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_clap_score_identical_and_empty(clap_dir):
    from must.metrics import ClapScore

    metric = ClapScore(clap_dir)
    scores = metric.scores(["the bass enters", "", "the drums stop and the tempo rises"], ["the bass enters"] * 3)
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and scores[1] == 0.0 and 0.0 <= scores[2] <= 1.0
    metric.update(["the bass enters", ""], ["the bass enters", "x"])
    assert metric.compute().item() == pytest.approx(0.5, abs=1e-5)


def test_must_score_with_clap_dir(clap_dir, tmp_path):
    ref = tmp_path / "ref.parquet"
    pd.DataFrame([{"id": "d1", "track_id": "t", "task": "TAD", "category": "c", "qa_type": "change",
                   "question": "?", "answer": "the bass enters", "answers": ["the bass enters"], "split": "test"}]
                 ).to_parquet(ref)
    pred = tmp_path / "p.jsonl"
    pred.write_text('{"id": "d1", "prediction": "the bass enters"}\n')
    out = tmp_path / "s.json"
    assert main(["score", "--predictions", str(pred), "--references", str(ref), "--out", str(out),
                 "--clap-dir", str(clap_dir)]) == 0
    got = json.loads(out.read_text())
    assert got["TAD"] == {"meteor": 98.15, "clap": 100.0, "score": 99.07}
    assert "tad_clap" not in got["missing"] and got["rows"][0]["tad_clap"] == pytest.approx(1.0, abs=1e-5)
