"""Time pointer: nearest audio token per time step, the logits it adds, cached generation, save/load."""

import math

import numpy as np
import pytest
import torch

from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.models.time_pointer import TimePointer
from tests._tiny import TINY_MODEL, reloaded

SR = 16000
POINTER = {**TINY_MODEL, "time_embedding": {"kind": "tokens", "pointer": True}, "answer_format": "grounded"}


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MusicLALM.from_config(POINTER).eval()
    with torch.no_grad():  # q and k start random; scale them so the pointer visibly moves the logits
        m.pointer.q.weight.mul_(8.0)
    return m


def test_each_time_step_points_at_the_nearest_audio_token():
    p = TimePointer(hidden=4, first=100, count=8)
    # Row 0: audio tokens at seconds 2 and 5 (positions 3, 4), the third slot empty; row 1: one token at 7.
    p.set_rows(torch.tensor([[3, 4, -1], [9, -1, -1]]), torch.tensor([[2, 5, -1], [7, -1, -1]]))
    # Ties (second 3.5 would be one) never arise on whole steps here: 3 is 1 from 2 and 2 from 5.
    assert p.nearest.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [0] * 8]
    assert p.step_of.tolist() == [[2, 5, 8], [7, 8, 8]]  # 8: the spare slot of padding
    assert p.empty[0].tolist() == [True, True, False, True, True, False, True, True]
    # Two tokens of step 1 (log-sum-exp), none of steps 0 and 2+ (nearest token's score).
    p.set_rows(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 3]]))
    scores = torch.tensor([[[0.0, 1.0, 5.0]]])
    got = p.per_step(scores, 1)[0, 0]
    assert got[1].item() == pytest.approx(math.log(math.exp(0.0) + math.exp(1.0)))
    assert got[3].item() == pytest.approx(5.0) and got[0].item() == pytest.approx(0.0)  # 0: nearest is token 0
    assert got[7].item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at least one audio token"):
        p.set_rows(torch.tensor([[-1, -1]]), torch.tensor([[-1, -1]]))


def test_pointer_adds_query_key_scores_to_the_time_logits_only(model):
    enc = model.encode_audio([_noise(6.0)], SR)
    q, a = ["When does the piano first appear?"], ["onset piano 0:03 → 0:03"]
    with torch.no_grad():
        on = model(enc, q, a).logits
        handles = model._pointer_handles
        for h in handles:
            h.remove()
        try:
            off = model(enc, q, a).logits
            inputs = model.prompt_inputs(enc, q, a)  # sets the rows again: positions of the audio tokens
            states = model.llm.model(**{k: v for k, v in inputs.items() if k != "labels"}).last_hidden_state
        finally:
            from must.models import time_pointer

            model._pointer_handles = time_pointer.attach(model.pointer, model.llm)
    p, te = model.pointer, model.time_embedding
    keys = p.k(states[0, p.positions[0]])  # (T, H)
    scores = p.q(states[0]) @ keys.T / states.shape[-1] ** 0.5  # (L, T)
    # (L, count): each step's log-sum-exp over its audio tokens; a step without one takes the nearest token's.
    steps = te.count
    want = torch.stack([scores[:, p.step_of[0] == s].logsumexp(-1) if (p.step_of[0] == s).any()
                        else scores[:, p.nearest[0, s]] for s in range(steps)], -1)
    diff = on - off
    span = slice(te.first, te.first + te.count)
    torch.testing.assert_close(diff[0, :, span], want, rtol=1e-4, atol=1e-4)
    others = torch.cat([diff[0, :, : te.first], diff[0, :, te.first + te.count :]], -1)
    assert others.numel() > 0 and others.abs().max() == 0
    assert want.abs().max() > 0.1  # the pointer moves them


def test_cached_generation_equals_recomputing_the_whole_sequence(model):
    enc = model.encode_audio([_noise(6.0, seed=1), _noise(9.0, seed=2)], SR)
    qs = ["When does the bass start?", "When do the drums stop?"]
    cached = model.generate_ids(enc, qs, max_new_tokens=6)
    # The same greedy answers, each step a full forward from the start (no KV cache: keys recomputed).
    prompt = model.prompt_embeds(enc, qs)
    x, mask, out = prompt["inputs_embeds"], prompt["attention_mask"], []
    embed = model.llm.get_input_embeddings()
    with torch.no_grad():
        for _ in range(6):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = model.llm(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False).logits
            nxt = logits[:, -1].argmax(-1)
            out.append(nxt)
            x = torch.cat([x, embed(nxt)[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    full = torch.stack(out, 1)
    eos = set(model._eos_ids())
    for row_c, row_f in zip(cached.tolist(), full.tolist()):
        n = next((i + 1 for i, t in enumerate(row_f) if t in eos), len(row_f))
        assert row_c[:n] == row_f[:n]


def test_save_and_load_keeps_the_pointer_and_the_logits(tmp_path, model):
    m2, _ = reloaded(model, tmp_path / "m", "When does the piano first appear?", "onset piano 0:03 → 0:03")
    assert torch.equal(m2.pointer.q.weight, model.pointer.q.weight)


def test_pointer_needs_time_tokens():
    with pytest.raises(ConfigError, match="time_embedding.pointer.*kind: tokens"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "digits", "pointer": True}})


def test_grpo_batches_point_each_prompt_at_its_own_audio(model):
    """GRPO builds prompts one by one and left-pads them together, and its sampler drops finished rows:
    greedy samples of the padded batch must equal each prompt's own generation."""
    from must.rl.decoding import sample
    from must.rl.policy import MusicPolicy

    policy = MusicPolicy(model, SR)
    rows = [{"waveform": _noise(s, seed=i), "track_id": f"t{i}", "question": q}
            for i, (s, q) in enumerate([(5.0, "When does the bass start?"), (9.0, "When do the drums stop?")])]
    items = policy.encode(rows)
    alone = [model.generate_ids(enc, [q], max_new_tokens=6)[0].tolist() for enc, q in items]
    embeds, mask = policy.embed(items)
    assert int(mask[0].sum()) < embeds.shape[1]  # the shorter clip's prompt is left-padded
    p = model.pointer
    # "EOS" = the first prompt's second token: its rows leave the batch after step 2, the others go on.
    eos = {alone[0][1]}
    assert eos.isdisjoint(alone[1][:3])
    out = sample(policy.lm, embeds, mask, 3, 6, sorted(eos), model.tokenizer.pad_token_id, greedy=True,
                 follow_rows=policy.follow_rows)
    assert p.row_index is None and out.completion_ids.shape[0] == 6
    for i, own in enumerate(alone):
        n = next((k + 1 for k, t in enumerate(own) if t in eos), len(own))
        for g in range(3):
            assert out.completion_ids[3 * i + g].tolist()[:n] == own[:n], (i, g)


def test_per_step_scores_stay_finite_however_far_apart():
    p = TimePointer(hidden=4, first=0, count=3)
    p.set_rows(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 0, 1]]))
    scores = torch.tensor([[[500.0, 499.0, -500.0]]], requires_grad=True)  # step 1 is 1000 below step 0
    got = p.per_step(scores, 1)[0, 0]
    assert got[0].item() == pytest.approx(500.0 + math.log1p(math.exp(-1.0)))
    assert got[1].item() == pytest.approx(-500.0) and got[2].item() == pytest.approx(-500.0)  # 2: nearest token
    got[1].backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.tolist() == [[[0.0, 0.0, 1.0]]]


def test_running_max_sees_strictly_before_or_after_and_skips_padding():
    from must.models.time_pointer import running_max

    x = torch.tensor([[[1.0], [3.0], [2.0], [9.0]]])  # (1, 4, 1); the last token is padding
    valid = torch.tensor([[True, True, True, False]])
    assert running_max(x, valid)[0, :3, 0].tolist() == [0.0, 1.0, 3.0]  # nothing before token 0: 0
    assert running_max(x, valid, later=True)[0, :3, 0].tolist() == [3.0, 2.0, 0.0]  # padding's 9 unseen


def test_context_keys_add_the_running_maxima_of_the_audio_before_and_after():
    from must.models.time_pointer import running_max

    torch.manual_seed(0)
    p = TimePointer(hidden=4, first=0, count=8, context=True)
    p.set_rows(torch.tensor([[1, 2, 3, -1]]), torch.tensor([[0, 1, 2, -1]]))
    states = torch.randn(1, 5, 4)
    p.starts(None, (), {})  # a fresh call
    p.capture(None, (), states)
    a = states[:, 1:4]
    valid = torch.ones(1, 3, dtype=torch.bool)
    want = p.k(a) + running_max(p.before(a), valid) + running_max(p.after(a), valid, later=True)
    assert torch.allclose(p.keys[:, :3], want)
    # Nothing follows the last audio token: its key has no "after" part.
    assert torch.allclose(p.keys[0, 2], (p.k(a) + running_max(p.before(a), valid))[0, 2])
    with pytest.raises(ConfigError, match="pointer_context.*pointer: true"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "pointer_context": True}})


def test_window_means_average_the_tokens_within_the_window_strictly_before_and_after():
    from must.models.time_pointer import window_means

    x = torch.tensor([[[1.0], [3.0], [5.0], [20.0], [9.0]]])  # (1, 5, 1); the last token is padding
    at = torch.tensor([[0.0, 1.0, 2.0, 6.0, 3.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    before, after = window_means(x, at, valid, 2.0)
    assert before[0, :, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 4.0]  # at 2 s: tokens at 0 and 1 s; at 6 s: none within 2 s
    assert after[0, :4, 0].tolist() == [4.0, 5.0, 0.0, 0.0]  # at 0 s: tokens at 1 and 2 s; padding (9) unseen


def test_window_keys_add_the_near_means_of_the_audio_tokens_only():
    from must.models.time_pointer import window_means

    torch.manual_seed(0)
    p = TimePointer(hidden=4, first=0, count=8, window=2.0)
    # three audio tokens at steps 0, 1, 4 and a prompt time token (step 1) at position 4
    p.set_rows(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0, 1, 4, 1]]),
               torch.tensor([[True, True, True, False]]))
    states = torch.randn(1, 5, 4)
    p.starts(None, (), {})
    p.capture(None, (), states)
    a = states[:, 1:4]
    before, after = window_means(a, torch.tensor([[0.0, 1.0, 4.0]]), torch.ones(1, 3, dtype=torch.bool), 2.0)
    torch.testing.assert_close(p.keys[:, :3], p.k(a) + p.near_before(before) + p.near_after(after))
    torch.testing.assert_close(p.keys[0, 3], p.k(states[0, 4]))  # a prompt time token's key has no window part
    with pytest.raises(ConfigError, match="pointer_window.*pointer: true"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "pointer_window": 3.0}})


def test_prompt_time_keys_join_their_step_and_only_their_own_block_sees_them():
    p = TimePointer(hidden=4, first=0, count=4)
    # Audio tokens of steps 0, 1 (positions 0, 1); prompt time tokens of step 1 (block 0, position 3) and
    # step 2 (block 1, position 5). Step 2 has no audio token: its score is still the nearest audio token's.
    p.set_rows(torch.tensor([[0, 1, 3, 5]]), torch.tensor([[0, 1, 1, 2]]),
               torch.tensor([[True, True, False, False]]), torch.tensor([[-1, -1, 0, 1]]))
    assert p.empty.tolist() == [[False, False, True, True]] and p.nearest.tolist() == [[0, 1, 1, 1]]
    scores = torch.tensor([[[0.0, 1.0, 2.0, 7.0], [0.0, 1.0, 2.0, 7.0]]])  # (1, 2 queries, 4 keys)
    both = p.per_step(scores, 1)[0, 0]
    assert both[1].item() == pytest.approx(math.log(math.exp(1.0) + math.exp(2.0)))
    assert both[2].item() == pytest.approx(1.0)  # empty of audio: the nearest audio token (step 1), not the prompt's
    p.set_rows(torch.tensor([[0, 1, 3, 5]]), torch.tensor([[0, 1, 1, 2]]), torch.tensor([[True, True, False, False]]),
               torch.tensor([[-1, -1, 0, 1]]), torch.tensor([[0, 1]]))  # query 0 is block 0's, query 1 block 1's
    own = p.per_step(scores, 1)[0]
    assert own[0, 1].item() == pytest.approx(math.log(math.exp(1.0) + math.exp(2.0)))  # its own prompt's key
    assert own[1, 1].item() == pytest.approx(1.0)  # block 1 does not see block 0's time token
    # Prompt keys get no context part: the running maxima are over the audio tokens only.
    c = TimePointer(hidden=4, first=0, count=4, context=True)
    c.set_rows(torch.tensor([[0, 1, 3]]), torch.tensor([[0, 1, 1]]), torch.tensor([[True, True, False]]))
    states = torch.randn(1, 4, 4)
    c.starts(None, (), {})
    c.capture(None, (), states)
    assert torch.allclose(c.keys[0, 2], c.k(states[0, 3]))


def test_packed_blocks_point_at_their_own_prompt_times_and_never_at_answers():
    from must.models.prompts import pack_questions

    torch.manual_seed(0)
    cfg = {**POINTER, "time_embedding": {"kind": "tokens", "pointer": True, "pointer_prompt": True}}
    m = MusicLALM.from_config(cfg).eval()
    enc = m.encode_audio([_noise(6.0)], SR)
    qs = [["What is happening at 0:02?", "When does the bass enter?", "Which change is at 0:04?"]]
    ans = [["drums 0:02 → A", "bass enters 0:03 → 0:03", "change 0:04 → B"]]
    with torch.no_grad():
        packed = pack_questions(m, enc, qs, ans)
    p, first = m.pointer, m.time_embedding.first
    prompt = ~p.audio[0] & (p.positions[0] >= 0)
    assert p.step_of[0][prompt].tolist() == [2, 4] and p.blocks[0][prompt].tolist() == [0, 2]
    ids = packed["inputs_embeds"]  # the marked positions hold those time tokens' embeddings, in their blocks
    table = m.llm.get_input_embeddings().weight
    for pos, step, block in zip(p.positions[0][prompt], p.step_of[0][prompt], p.blocks[0][prompt]):
        assert torch.equal(ids[0, pos], table[first + step]) and packed["block"][0, pos] == block
        assert packed["labels"][0, pos] == -100  # a question's token, not an answer's
    assert torch.equal(p.query_blocks, packed["block"])
    off = MusicLALM.from_config(POINTER).eval()
    with torch.no_grad():
        pack_questions(off, off.encode_audio([_noise(6.0)], SR), qs, ans)
    assert bool(off.pointer.audio[off.pointer.positions >= 0].all())  # without pointer_prompt: audio keys only
    with pytest.raises(ConfigError, match="pointer_prompt.*pointer: true"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "pointer_prompt": True}})


def test_left_padded_batches_keep_each_prompt_time_key_on_its_token():
    """Generation and GRPO left-pad prompts of different lengths: every prompt time key must move with its
    row, so batched greedy answers equal each prompt's own, and the prompt's time key changes them."""
    from must.rl.policy import MusicPolicy

    torch.manual_seed(0)
    cfg = {**POINTER, "time_embedding": {"kind": "tokens", "pointer": True, "pointer_prompt": True}}
    m = MusicLALM.from_config(cfg).eval()
    with torch.no_grad():
        m.pointer.q.weight.mul_(8.0)
    waves = [_noise(5.0, seed=3), _noise(9.0, seed=4)]
    qs = ["What is happening at 0:02?", "Which of these is heard at 0:07, of all the options given?"]
    enc = m.encode_audio(waves, SR)
    with torch.no_grad():
        batch = m.generate_ids(enc, qs, max_new_tokens=5).tolist()
        alone = [m.generate_ids(m.encode_audio([w], SR), [q], max_new_tokens=5)[0].tolist() for w, q in zip(waves, qs)]
    eos = set(m._eos_ids())
    for got, own in zip(batch, alone):
        n = next((i + 1 for i, t in enumerate(own) if t in eos), len(own))
        assert got[:n] == own[:n]
    policy = MusicPolicy(m, SR)
    items = policy.encode([{"waveform": w, "track_id": f"t{i}", "question": q}
                           for i, (w, q) in enumerate(zip(waves, qs))])
    embeds, _ = policy.embed(items)
    p, table = m.pointer, m.llm.get_input_embeddings().weight
    for r, step in enumerate([2, 7]):  # each row's prompt key sits on its own time token after the padding
        (pos,) = p.positions[r][(p.positions[r] >= 0) & ~p.audio[r]].tolist()
        assert p.step_of[r, (p.positions[r] == pos)].item() == step
        assert torch.equal(embeds[r, pos], table[m.time_embedding.first + step])
    # The key matters: without it (same weights) the time logits of the first question differ.
    with torch.no_grad():
        on = m(enc, qs[:1] * 2, ["at 0:02 → A"] * 2).logits
        m.time_embedding.cfg.pointer_prompt = False
        off = m(enc, qs[:1] * 2, ["at 0:02 → A"] * 2).logits
        m.time_embedding.cfg.pointer_prompt = True
    first, count = m.time_embedding.first, m.time_embedding.count
    assert not torch.allclose(on[..., first : first + count], off[..., first : first + count])
    assert torch.equal(on[..., :first], off[..., :first])
