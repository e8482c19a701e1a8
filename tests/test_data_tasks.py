"""The five task builders: answers parse back to the labels, no trivial answers, balanced letters, splits."""

from collections import Counter

import numpy as np
import pytest

from must.data.config import DataConfig
from must.data.datasets import synthetic_split, track_seed
from must.data.synth import NO_CHANGE_TEXTS, SOURCE_LABELS, generate_track
from must.data.tasks import (
    GTO_ORDERS,
    MTR_MAX_COVER,
    TRIVIAL_MARGIN_S,
    arousal_extreme,
    build_qas,
    most_frequent_letter,
    select_qas,
    trivial_answer,
)
from must.parsing import parse_intervals, parse_option, parse_time

CFG = DataConfig(min_seconds=40.0, max_seconds=90.0)


@pytest.fixture(scope="module")
def labelled():
    """(track, qas) for 40 tracks, labels only (no audio: the builders never look at it)."""
    out = []
    for seed in range(40):
        t = generate_track(seed, CFG, render_audio=False)
        out.append((t, build_qas(t, seed, "train")))
    return out


def _options(question):
    return {line[0]: line[3:] for line in question.splitlines() if len(line) > 3 and line[1:3] == ". "}


def test_same_seed_same_qas_different_seed_different(labelled):
    _t, qas = labelled[5]
    assert build_qas(generate_track(5, CFG, render_audio=False), 5, "train") == qas
    assert [q.question for q in labelled[6][1]] != [q.question for q in qas]


def test_all_five_tasks_are_built(labelled):
    counts = Counter(q.task for _, qas in labelled for q in qas)
    assert set(counts) == {"TSG", "LTR", "TAD", "GTO", "MTR"}
    kinds = Counter(q.qa_type for _, qas in labelled for q in qas if q.task == "TSG")
    assert kinds["onset"] >= 20 and kinds["offset"] >= 10


def test_tsg_answers_parse_back_to_the_labels_and_are_not_trivial(labelled):
    for t, qas in labelled:
        for q in (q for q in qas if q.task == "TSG"):
            src = [s for s, label in SOURCE_LABELS.items() if f"the {label} " in q.question]
            assert len(src) == 1, q.question
            runs = t.sources[src[0]]
            truth = runs[0][0] if q.qa_type == "onset" else runs[-1][1]
            parsed = parse_time(q.answer)
            assert parsed.ok and abs(parsed.value - truth) <= 0.5, (q.answer, truth)
            assert q.answers == [q.answer]
            if q.qa_type == "onset":
                assert truth >= TRIVIAL_MARGIN_S
            else:
                assert truth <= t.duration - TRIVIAL_MARGIN_S


def test_ltr_answer_is_the_change_at_the_asked_time(labelled):
    n_change = n_quiet = 0
    for t, qas in labelled:
        descriptions_by_time = {round(tr.time): tr for tr in t.transitions}
        for q in (q for q in qas if q.task == "LTR"):
            opts = _options(q.question)
            assert sorted(opts) == list("ABCD") and len(set(opts.values())) == 4
            assert parse_option(q.answer, "ABCD").value == q.answer
            asked = parse_time(q.question.splitlines()[0]).value
            chosen = opts[q.answer]
            if q.category == "no_change":
                assert chosen in NO_CHANGE_TEXTS
                assert min(abs(asked - tr.time) for tr in t.transitions) >= 5
                n_quiet += 1
            else:
                assert chosen not in NO_CHANGE_TEXTS
                assert sum(o in NO_CHANGE_TEXTS for o in opts.values()) == 1
                assert round(asked) in descriptions_by_time or any(
                    abs(asked - x) <= 0.5 for x in descriptions_by_time
                )
                n_change += 1
    assert n_change > 50 and n_quiet > 5


def test_gto_letter_matches_the_true_order(labelled):
    n = 0
    for t, qas in labelled:
        time_of = {tr.description: tr.time for tr in t.transitions}
        for q in (q for q in qas if q.task == "GTO"):
            named = {}
            for line in q.question.splitlines():
                if line[:3] in ("X: ", "Y: ", "Z: "):
                    named[line[0]] = time_of[line[3:]]
            assert sorted(named) == ["X", "Y", "Z"]
            true_order = tuple(sorted(named, key=named.get))
            assert GTO_ORDERS["ABCDEF".index(q.answer)] == true_order
            n += 1
    assert n >= 20


def test_mtr_answers_parse_back_and_never_cover_the_whole_track(labelled):
    n_multi = 0
    for t, qas in labelled:
        for q in (q for q in qas if q.task == "MTR"):
            parsed = parse_intervals(q.answer)
            assert parsed.ok
            truth = arousal_extreme(t, q.qa_type)
            assert len(parsed.value) == len(truth) == len(q.answers)
            for (a, b), (x, y) in zip(parsed.value, truth):
                assert abs(a - x) <= 0.5 and abs(b - y) <= 0.5
            assert "\u2013" in q.answer
            assert sum(y - x for x, y in truth) <= MTR_MAX_COVER * t.duration
            n_multi += len(truth) > 1
    assert n_multi >= 1


def test_tad_references(labelled):
    for t, qas in labelled:
        descs = {tr.description for tr in t.transitions}
        for q in (q for q in qas if q.task == "TAD"):
            assert q.answer in descs and q.answers[0] == q.answer and len(q.answer) > 10


def test_letters_are_balanced_and_trivial_baselines_stay_low(labelled):
    qas = [q for _, qs in labelled for q in qs]
    for task, letters in (("LTR", "ABCD"), ("GTO", "ABCDEF")):
        counts = Counter(q.answer for q in qas if q.task == task)
        total = sum(counts.values())
        assert set(counts) == set(letters)
        assert max(counts.values()) / total < 1.6 / len(letters), counts
    majority = most_frequent_letter(qas)
    # TSG trivial answers (0:00, track end) never within 3 s of the truth
    for q in (q for q in qas if q.task == "TSG"):
        trivial = parse_time(trivial_answer(q)).value
        assert abs(trivial - parse_time(q.answer).value) > 3.0
    ltr = [q for q in qas if q.task == "LTR"]
    assert sum(q.answer == majority["LTR"] for q in ltr) / len(ltr) < 0.4


def test_trivial_answer_values():
    t = generate_track(1, CFG, render_audio=False)
    qas = build_qas(t, 1, "test")
    by = {(q.task, q.qa_type): q for q in qas}
    onset = next(q for q in qas if q.qa_type == "onset")
    assert trivial_answer(onset) == "0:00"
    mtr = next(q for q in qas if q.task == "MTR")
    assert trivial_answer(mtr) == f"0:00\u2013{int(t.duration // 60)}:{round(t.duration) % 60:02d}"
    assert trivial_answer(next(q for q in qas if q.task == "LTR"), "C") == "C"
    assert by


def test_select_qas_balances_tasks(labelled):
    _t, qas = max(labelled, key=lambda x: len(x[1]))
    chosen = select_qas(qas, 5, seed=0)
    assert len(chosen) == 5 and len({q.task for q in chosen}) == 5
    assert select_qas(qas, 0, seed=0) == qas


def test_splits_are_disjoint_and_fixed():
    cfg = DataConfig(min_seconds=20, max_seconds=25, train_tracks=4, val_tracks=3, test_tracks=3)
    seeds = {s: {track_seed(cfg.seed, s, i) for i in range(50)} for s in ("train", "val", "test")}
    assert (
        not (seeds["train"] & seeds["val"])
        and not (seeds["train"] & seeds["test"])
        and not (seeds["val"] & seeds["test"])
    )
    test_a, qas_a = synthetic_split(cfg, "test")
    test_b, qas_b = synthetic_split(cfg, "test")
    val, _ = synthetic_split(cfg, "val")
    assert [t.id for t in test_a] == [t.id for t in test_b] and qas_a == qas_b
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(test_a, test_b))
    hashes = {hash(t.audio.tobytes()) for t in test_a}
    assert not hashes & {hash(t.audio.tobytes()) for t in val}
    assert not {t.id for t in test_a} & {t.id for t in val}
    assert all(q.split == "test" for q in qas_a) and len(qas_a) <= 3 * cfg.questions_per_track


def test_trivial_baselines_score_low_with_the_benchmark_scorer(labelled):
    from must.metrics.mustbench import trivial_baseline_scores

    rows = [q.to_row() for _, qas in labelled for q in qas]
    s = trivial_baseline_scores(rows)
    assert s["TSG"]["onset"] == 0.0 and s["TSG"]["offset"] == 0.0
    assert s["LTR"]["accuracy"] < 35 and s["GTO"]["accuracy"] < 30
    assert s["MTR"]["iou"] < 30
