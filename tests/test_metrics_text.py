"""METEOR (with or without WordNet) and the MusTBench collection's JSON shape."""

import pytest

from must.metrics import MusTBenchMetric, meteor, meteor_mode, score_row, scores_json, trivial_baseline_scores
from must.metrics import text as text_metrics


def test_meteor_exact_match_and_empty():
    # P = R = 1, one chunk of 3 matches: 1 - 0.5 * (1/3)^3 (nltk defaults alpha .9, beta 3, gamma .5)
    assert meteor("the bass enters", "the bass enters") == pytest.approx(1 - 0.5 / 27)
    assert meteor("", "the bass enters") == 0.0
    assert meteor("drums", ["the bass enters", "drums come in"]) > meteor("drums", "the bass enters")


def test_meteor_falls_back_to_stems_without_wordnet(monkeypatch):
    monkeypatch.setattr(text_metrics, "load_wordnet", lambda: (text_metrics._NoWordNet(), "exact+stem"))
    assert text_metrics.meteor_mode() == "exact+stem"
    # "drum"/"drums" match by stem; "begin"/"start" are synonyms only with WordNet
    stem_only = text_metrics.meteor("the drum begins", "the drums start")
    assert stem_only == pytest.approx(text_metrics.meteor("the drum stop", "the drums start"))


@pytest.mark.skipif(meteor_mode() != "wordnet", reason="no WordNet database installed (apt-get install wordnet-base)")
def test_meteor_uses_wordnet_synonyms_when_present():
    with_syn = meteor("the drum begins", "the drums start")
    assert with_syn > meteor("the drum stops", "the drums start")


def test_scores_json_shape_and_missing():
    means = {"tsg_onset": 0.5, "tsg_offset": 0.25, "ltr": 1.0, "tad_meteor": 0.2, "mtr_iou": 0.3, "mtr_f1": 0.4}
    out = scores_json(means, ["TSG", "LTR", "TAD", "MTR"])
    assert out["TSG"] == {"onset": 50.0, "offset": 25.0, "score": 37.5}
    assert out["TAD"] == {"meteor": 20.0, "clap": None, "score": 20.0}
    assert out["GTO"] is None
    assert out["MTR"] == {"iou": 30.0, "f1": 40.0, "score": 35.0}
    assert out["overall"] == pytest.approx(100 * (0.5 + 0.25 + 1.0 + 0.2 + 0.3 + 0.4) / 6, abs=0.005)
    assert out["missing"] == ["tad_clap", "gto"]


def test_collection_and_baselines():
    refs = [
        {"id": "a", "track_id": "t", "task": "TSG", "qa_type": "onset", "answer": "0:30", "answers": ["0:30"], "duration": 100.0},
        {"id": "b", "track_id": "t", "task": "TSG", "qa_type": "offset", "answer": "1:40", "answers": ["1:40"], "duration": 100.0},
        {"id": "c", "track_id": "t", "task": "GTO", "qa_type": None, "answer": "F", "answers": ["F"], "duration": 100.0},
        {"id": "d", "track_id": "t", "task": "GTO", "qa_type": None, "answer": "F", "answers": ["F"], "duration": 100.0},
        {"id": "e", "track_id": "t", "task": "GTO", "qa_type": None, "answer": "A", "answers": ["A"], "duration": 100.0},
        {"id": "f", "track_id": "t", "task": "MTR", "qa_type": None, "answer": "0:00\u20130:25", "answers": ["0:00\u20130:25"], "duration": 100.0},
    ]
    m = MusTBenchMetric()
    m.update(["0:27", "1:36", "F", "(A)", "A.", "0:00-0:50"], refs)
    out = m.compute()
    assert out["TSG"] == {"onset": 100.0, "offset": 0.0, "score": 50.0}  # |1:36 - 1:40| = 4 s > 3
    assert out["GTO"] == {"accuracy": 66.67, "score": 66.67}
    assert out["MTR"] == {"iou": 50.0, "f1": 66.67, "score": 58.33}
    assert out["LTR"] is None and out["TAD"] is None
    base = trivial_baseline_scores(refs)
    # 0:00 vs 0:30 misses; 1:40 (track end) hits; letter F (most frequent) gets 2/3; whole track IoU 25/100
    assert base["TSG"] == {"onset": 0.0, "offset": 100.0, "score": 50.0}
    assert base["GTO"]["accuracy"] == 66.67
    assert base["MTR"] == {"iou": 25.0, "f1": 40.0, "score": 32.5}


def test_baseline_without_duration_names_missing():
    refs = [{"id": "b", "track_id": "t", "task": "TSG", "qa_type": "offset", "answer": "1:40", "answers": ["1:40"]}]
    base = trivial_baseline_scores(refs)
    assert base["TSG"]["offset"] is None and "tsg_offset" in base["missing"]


def test_score_row_reasons():
    ref = {"id": "x", "task": "TSG", "qa_type": "onset", "answer": "0:30", "answers": ["0:30"]}
    assert score_row(None, ref).reason == "no prediction"
    assert score_row("23:76", ref).reason.startswith("impossible time")
    row = score_row("0:33", ref)
    assert row.scores == {"tsg_onset": 1.0} and row.parsed == 33.0 and row.reason is None
