"""Pure helpers of the stages: packed multi-question sequences, losses, peaks and boundary F1, question draws."""

import numpy as np
import pytest
import torch

from must.data.datasets import pick_questions
from must.data.types import QA
from must.models.lalm import MusicLALM
from must.stages import common
from must.stages.encoder_adapt import boundary_hits, ccc_loss, f1, focal_bce, pick_peaks

TINY = {"encoder": {"width": 32, "layers": 1, "heads": 2, "n_mels": 16},
        "llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(TINY).eval()


def test_block_mask_by_hand():
    # shared, shared, block0, block0, block1, pad
    block = torch.tensor([[-1, -1, 0, 0, 1, -1]])
    real = torch.tensor([[True, True, True, True, True, False]])
    m = common.block_mask(block, real)[0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # block 1 sees the shared part and itself, not block 0
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (no all-masked row)
    ]


@pytest.mark.parametrize("position,rows", [("after", 2), ("before", 3), ("both", 3)])
def test_packed_questions_equal_separate_prompts(model, monkeypatch, position, rows):
    monkeypatch.setattr(model.cfg, "question_position", position)
    waves = [np.random.default_rng(i).standard_normal(16000 * 6).astype(np.float32) * 0.1 for i in range(2)]
    enc = model.encode_audio(waves, 16000)
    questions = [["When does the bass first appear?", "Which change happens at 0:03?\nA. x\nB. y"],
                 ["When is the music calmest?"]]
    answers = [["0:02", "B"], ["0:01–0:04"]]
    with torch.no_grad():
        packed = common.pack_questions(model, enc, questions, answers)
        logits = model.llm(inputs_embeds=packed["inputs_embeds"], attention_mask=packed["attention_mask"],
                           position_ids=packed["position_ids"], use_cache=False).logits
        losses = common.per_block_loss(logits, packed["labels"], packed["block"], packed["n_blocks"])
        separate = [model(enc.index_select([b]), [q], [a]).loss
                    for b in range(2) for q, a in zip(questions[b], answers[b])]
    assert packed["n_blocks"] == 3
    assert packed["inputs_embeds"].shape[0] == rows  # one row per clip only when the question follows the music
    torch.testing.assert_close(losses, torch.stack(separate), atol=1e-5, rtol=1e-5)


def test_per_block_loss_normalises_each_question():
    # Two blocks: block 0 has 1 answer token, block 1 has 3; each block's loss is its own token mean.
    v = 4
    logits = torch.zeros(1, 6, v)
    labels = torch.tensor([[-100, 2, -100, 1, 1, 1]])
    block = torch.tensor([[-1, 0, 1, 1, 1, 1]])
    logits[0, 0, 2] = 10.0  # predicts token 2 at position 1: near-zero loss for block 0
    out = common.per_block_loss(logits, labels, block, 2)
    assert out[0] < 1e-3
    assert out[1] == pytest.approx(np.log(v), rel=1e-5)


def test_balanced_loss_weighs_tasks_not_questions():
    losses = torch.tensor([1.0, 1.0, 1.0, 4.0])
    total, per_task = common.balanced_loss(losses, ["TSG", "TSG", "TSG", "GTO"])
    assert per_task["TSG"].item() == 1.0 and per_task["GTO"].item() == 4.0
    assert total.item() == pytest.approx(2.5)  # not the question mean 1.75
    total, _ = common.balanced_loss(losses, ["TSG", "TSG", "TSG", "GTO"], {"GTO": 3.0})
    assert total.item() == pytest.approx((1.0 + 3 * 4.0) / 4)


def test_pick_peaks_and_boundary_f1_by_hand():
    times = np.arange(20) * 0.5 + 0.25
    probs = np.zeros(20)
    probs[[4, 5, 6]] = [0.6, 0.9, 0.5]   # one peak at 2.75 s
    probs[[12]] = 0.35                    # a weak peak at 6.25 s
    probs[[13]] = 0.34
    assert pick_peaks(probs, times, 0.3) == [2.75, 6.25]
    assert pick_peaks(probs, times, 0.4) == [2.75]
    # 2 predicted, 3 true; within 1 s only 2.75 ~ 3.0 matches; within 3 s also 6.25 ~ 8.0
    assert boundary_hits([2.75, 6.25], [3.0, 8.0, 15.0], 1.0) == (1, 2, 3)
    assert boundary_hits([2.75, 6.25], [3.0, 8.0, 15.0], 3.0) == (2, 2, 3)
    assert f1(1, 2, 3) == pytest.approx(0.4)
    assert boundary_hits([3.0], [2.5, 3.2], 1.0) == (1, 1, 2)  # one prediction matches one boundary only


def test_transition_and_mood_losses():
    logits = torch.tensor([0.0, 2.0])
    target = torch.tensor([0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    torch.testing.assert_close(focal_bce(logits, target, 0.0), bce)
    focal = focal_bce(logits, target, 2.0)
    assert (focal < bce).all()  # easy examples are down-weighted
    x = torch.tensor([0.1, 0.5, -0.6])  # zero mean: CCC(x, -x) = -1
    assert ccc_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ccc_loss(x, -x).item() == pytest.approx(2.0, abs=1e-5)


def _qa(task, qa_type="x", i=0):
    return QA(id=f"{task}{qa_type}{i}", track_id="t", task=task, category="c", qa_type=qa_type, question="q",
              answer="a")


def test_pick_questions_draws_types_in_balance():
    qas = [_qa("TSG", "onset", i) for i in range(20)] + [_qa("TSG", "offset")] + [_qa("GTO", i=i) for i in range(3)]
    rng = np.random.default_rng(0)
    counts = {"TSG-onset": 0, "TSG-offset": 0, "GTO": 0}
    for _ in range(200):
        picked = pick_questions(qas, 3, rng)
        assert len({q.id for q in picked}) == 3
        for q in picked:
            counts[f"TSG-{q.qa_type}" if q.task == "TSG" else q.task] += 1
    # 3 draws among 3 types: the one offset question is asked every time, not 1 time in 8
    assert counts == {"TSG-onset": 200, "TSG-offset": 200, "GTO": 200}
    picked = pick_questions(qas, 6, rng, {"TSG-onset": 2.0})
    assert sum(q.qa_type == "onset" for q in picked) == 3  # 2:1:1 -> 3 onsets, 1 offset, 2 GTO (offsets run out)
    picked = pick_questions(qas, 3, rng, {"TSG-onset": 1.0, "TSG-offset": 0.0, "GTO": 0.0})
    assert all(q.qa_type == "onset" for q in picked)
    # fewer questions than types: the weights still decide which types are asked
    mixed = qas + [_qa("LTR", i=i) for i in range(3)] + [_qa("MTR", i=i) for i in range(3)]
    weights = {"TSG-onset": 3.0, "TSG-offset": 3.0, "MTR": 2.0}
    for _ in range(50):
        picked = pick_questions(mixed, 3, rng, weights)
        assert sorted(f"TSG-{q.qa_type}" if q.task == "TSG" else q.task for q in picked) == [
            "MTR", "TSG-offset", "TSG-onset"]
        assert pick_questions(mixed, 4, rng, weights)[3].task in {"GTO", "LTR"}  # then the weight-1 types


def test_encoding_cache_encodes_each_track_once(model):
    waves = [np.random.default_rng(i).standard_normal(16000 * (4 + i)).astype(np.float32) * 0.1 for i in range(3)]
    cache = common.EncodingCache()
    first = cache.get(model, ["a", "b"], waves[:2], 16000)
    again = cache.get(model, ["b", "c", "a"], [waves[1], waves[2], waves[0]], 16000)
    assert cache.calls == 2  # "c" was new; "a" and "b" came from the cache
    direct = model.encode_audio(waves, 16000, stochastic=False)
    for row, i in ((0, 1), (1, 2), (2, 0)):
        n = int(direct.mask[i].sum())
        torch.testing.assert_close(again.features[row, :n], direct.features[i, :n])
        torch.testing.assert_close(again.times[row, :n], direct.times[i, :n])
        assert int(again.mask[row].sum()) == n
    torch.testing.assert_close(first.features[0], again.features[2, : first.features.shape[1]])


def test_encoding_cache_is_bounded_by_bytes(model):
    from must.data.cache import encoding_bytes

    waves = [np.random.default_rng(i).standard_normal(16000 * 4).astype(np.float32) * 0.1 for i in range(2)]
    one = common.trim_encoding(model.encode_audio(waves[:1], 16000, stochastic=False), 10**6)
    cache = common.EncodingCache(max_bytes=int(1.5 * encoding_bytes(one)))  # room for one track, not two
    cache.get(model, ["a", "b"], waves, 16000)
    assert list(cache.items.items) == ["b"] and cache.items.nbytes <= cache.items.max_bytes
    cache.get(model, ["b"], waves[1:], 16000)
    assert cache.calls == 1  # b was held
    got = cache.get(model, ["a"], waves[:1], 16000)  # a was dropped: encoded again, the same tokens
    assert cache.calls == 2 and list(cache.items.items) == ["a"]
    torch.testing.assert_close(got.features[0], one.features[0])
    tiny = common.EncodingCache(max_bytes=0)  # holds nothing, still answers the batch
    assert tiny.get(model, ["a", "b"], waves, 16000).features.shape[0] == 2 and len(tiny.items) == 0
