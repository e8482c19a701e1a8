"""Label reads (``time_embedding.read_labels``): an answer's X, Y, Z carry what their ``X: <text>`` lines say,
teacher-forced and generated alike."""

import pytest
import torch

from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.models.prompts import label_lines, pack_questions
from must.models.time_pointer import LABEL_DECAY
from tests._tiny import SR, TINY_MODEL, noise, reloaded

LABELS = {**TINY_MODEL, "answer_format": "grounded",
          "time_embedding": {"kind": "tokens", "pointer": True, "read_labels": True}}
Q = ("The following three changes happen in this track:\nX: The kick comes in.\nY: It gets louder.\n"
     "Z: The bass drops out.\nIn what chronological order do they occur?\nA. X → Y → Z\nB. Y → X → Z")
A = "X onset kick 0:01 Y louder 0:03 Z offset bass 0:05 X → Y → Z → A"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MusicLALM.from_config(LABELS).eval()
    with torch.no_grad():  # zero at the start; random here so that the reads visibly move the model
        torch.nn.init.normal_(m.pointer.label_mean.weight)
        torch.nn.init.normal_(m.pointer.label_first.weight)
    return m


def _tokens(model, text):
    return [model.tokenizer.decode([i]) for i in model.text_ids(text)]


def test_label_lines_find_each_lines_text():
    m = MusicLALM.from_config(LABELS)
    _, after = m.prompt_parts(Q)
    toks = _tokens(m, after)
    found = label_lines(m, after)
    assert [k for k, _ in found] == [0, 1, 2]  # X, Y, Z
    assert ["".join(toks[i] for i in words).strip() for _, words in found] == [
        "The kick comes in.", "It gets louder.", "The bass drops out."]
    assert label_lines(m, "When does the bass enter?\nA. 0:01\nB. 0:02") == []  # option lines are not labels


def test_the_answers_labels_gain_their_lines_read_and_nothing_else_moves(model):
    p = model.pointer
    enc = model.encode_audio([noise(8.0)], SR)
    with torch.no_grad():
        read = pack_questions(model, enc, [[Q]], [[A]])
        maps = p.label_mean.weight.clone(), p.label_first.weight.clone()
        torch.nn.init.zeros_(p.label_mean.weight)
        torch.nn.init.zeros_(p.label_first.weight)
        plain = pack_questions(model, enc, [[Q]], [[A]])
        p.label_mean.weight.copy_(maps[0])
        p.label_first.weight.copy_(maps[1])
        _, after = model.prompt_parts(Q)
        emb = model.llm.get_input_embeddings()(torch.tensor(model.text_ids(after)))
        words = label_lines(model, after)[1][1]  # Y's line, " It gets louder."
        line = emb[words]
        w = LABEL_DECAY ** torch.arange(len(words), dtype=line.dtype)
        want = p.label_mean(line.mean(0)) + p.label_first((w[:, None] * line).sum(0) / w.sum())
    diff = (read["inputs_embeds"] - plain["inputs_embeds"])[0]
    moved = diff.abs().sum(-1).nonzero().squeeze(1).tolist()
    ids = read["labels"][0].tolist()
    # The answer's X, Y, Z where the trace names them and in its order: six tokens, none of the prompt's.
    assert [model.tokenizer.decode([ids[i]]).strip() for i in moved] == ["X", "Y", "Z", "X", "Y", "Z"]
    ys = [i for i in moved if model.tokenizer.decode([ids[i]]).strip() == "Y"]
    for i in ys:
        torch.testing.assert_close(diff[i], want, rtol=1e-4, atol=1e-5)


def test_generation_and_grpo_scoring_read_the_labels_as_training_does(model):
    """The hook on the input embedding gives a generated (or GRPO-scored) label token the read that the
    teacher-forced answer has: the same logits, step by step on the KV cache and through completion_logits."""
    from must.rl.decoding import _CACHE, completion_logits
    from must.rl.policy import MusicPolicy

    enc = model.encode_audio([noise(7.0)], SR)
    answer = model.text_ids(A) + [model.tokenizer.eos_token_id]
    with torch.no_grad():
        forced = model(enc, [Q], [A])
        labels = model.prompt_inputs(enc, [Q], [A])["labels"]
        at = (labels[0] != -100).nonzero().squeeze(1)
        want = forced.logits[0, at - 1]  # (N, V): the logits that predict each answer token
        prompt = model.prompt_embeds(enc, [Q])
        x, mask = prompt["inputs_embeds"], prompt["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = model.llm(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True)
        steps, cache, nxt = [out.logits[0, -1]], getattr(out, _CACHE), pos[:, -1:] + 1
        for t in answer[:-1]:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model.llm(input_ids=torch.tensor([[t]]), attention_mask=mask, position_ids=nxt,
                            use_cache=True, **{_CACHE: cache})
            steps.append(out.logits[0, -1])
            cache, nxt = getattr(out, _CACHE), nxt + 1
        torch.testing.assert_close(torch.stack(steps), want, rtol=1e-4, atol=1e-4)
        policy = MusicPolicy(model, SR)
        embeds, pmask = policy.embed([(enc, Q)])
        scored = completion_logits(policy.lm, embeds, pmask, torch.tensor([answer] * 2), 2)
        torch.testing.assert_close(scored[1], want, rtol=1e-4, atol=1e-4)
        model.pointer.set_labels(None)
        off = completion_logits(policy.lm, embeds, pmask, torch.tensor([answer]), 1)
    assert (off[0] - want).abs().max() > 1e-3  # without the reads the completion scores differently


def test_reads_start_at_zero_and_learn():
    torch.manual_seed(0)
    m = MusicLALM.from_config(LABELS)
    out = m(m.encode_audio([noise(6.0)], SR), [Q], [A])
    assert m.pointer.label_first.weight.abs().max() == 0  # zero at the start: the model is unchanged
    out.loss.backward()
    assert m.pointer.label_mean.weight.grad.abs().max() > 0  # …and the SFT loss reaches both maps
    assert m.pointer.label_first.weight.grad.abs().max() > 0


def test_save_and_load_keep_the_label_maps_and_the_logits(tmp_path, model):
    loaded, _ = reloaded(model, tmp_path / "m", Q, A)
    assert torch.equal(loaded.pointer.label_mean.weight, model.pointer.label_mean.weight)


def test_read_labels_needs_the_pointer():
    with pytest.raises(ConfigError, match="read_labels.*pointer: true"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "read_labels": True}})
