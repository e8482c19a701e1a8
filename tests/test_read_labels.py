"""Label reads (``time_embedding.read_labels``): a prompt's X, Y, Z carry what their ``X: <text>`` lines say."""

import torch

from must.models.lalm import MusicLALM
from must.models.prompts import label_lines, pack_questions
from must.models.time_embedding import LABEL_DECAY
from tests._tiny import SR, TINY_MODEL, noise, reloaded

LABELS = {**TINY_MODEL, "answer_format": "grounded", "time_embedding": {"kind": "tokens", "read_labels": True}}
Q = ("The following three changes happen in this track:\nX: The kick comes in.\nY: It gets louder.\n"
     "Z: The bass drops out.\nIn what chronological order do they occur?\nA. X → Y → Z\nB. Y → X → Z")
A = "X onset kick 0:01 Y louder 0:03 Z offset bass 0:05 X → Y → Z → A"


def _model():
    torch.manual_seed(0)
    return MusicLALM.from_config(LABELS).eval()


def _tokens(model, text):
    return [model.tokenizer.decode([i]) for i in model.text_ids(text)]


def test_label_lines_find_every_spelling_of_a_label_and_its_lines_text():
    model = _model()
    _, after = model.prompt_parts(Q)
    toks = _tokens(model, after)
    found = label_lines(model, after)
    assert [[toks[i] for i in labels] for labels, _ in found] == [["X", " X", " X"], ["Y", " Y", " Y"],
                                                                  ["Z", " Z", " Z"]]
    assert ["".join(toks[i] for i in words).strip() for _, words in found] == [
        "The kick comes in.", "It gets louder.", "The bass drops out."]
    assert label_lines(model, "When does the bass enter?\nA. 0:01\nB. 0:02") == []  # options are not labels


def test_each_label_gains_its_lines_read_and_nothing_else_moves():
    model = _model()
    te = model.time_embedding
    enc = model.encode_audio([noise(8.0)], SR)
    with torch.no_grad():
        plain = pack_questions(model, enc, [[Q]], [[A]])
        torch.nn.init.normal_(te.label_mean.weight)
        torch.nn.init.normal_(te.label_first.weight)
        read = pack_questions(model, enc, [[Q]], [[A]])
        _, after = model.prompt_parts(Q)
        start = int((plain["block"][0] == 0).nonzero()[0])  # where the question block starts
        ids = torch.tensor(model.text_ids(after))
        emb = model.llm.get_input_embeddings()(ids)
        (labels, words), *_ = label_lines(model, after)  # X: " The kick comes in."
        line = emb[words]
        w = LABEL_DECAY ** torch.arange(len(words), dtype=line.dtype)
        want = te.label_mean(line.mean(0)) + te.label_first((w[:, None] * line).sum(0) / w.sum())
    diff = (read["inputs_embeds"] - plain["inputs_embeds"])[0]
    moved = diff.abs().sum(-1).nonzero().squeeze(1).tolist()
    assert len(moved) == 9  # X, Y, Z once on their lines and twice in the options; the answer's labels are not read
    assert all(read["labels"][0, p] == -100 for p in moved)
    for p in labels:
        torch.testing.assert_close(diff[start + p], want, rtol=1e-4, atol=1e-5)


def test_reads_start_at_zero_and_learn():
    model = _model()
    enc = model.encode_audio([noise(6.0)], SR)
    out = model(enc, [Q], [A])
    assert model.time_embedding.label_first.weight.abs().max() == 0  # zero at the start: the model is unchanged
    out.loss.backward()
    assert model.time_embedding.label_mean.weight.grad.abs().max() > 0  # …and the SFT loss reaches both maps
    assert model.time_embedding.label_first.weight.grad.abs().max() > 0


def test_save_and_load_keep_the_label_maps_and_the_logits(tmp_path):
    model = _model()
    with torch.no_grad():
        torch.nn.init.normal_(model.time_embedding.label_mean.weight)
    loaded, _ = reloaded(model, tmp_path / "m", Q, A)
    torch.testing.assert_close(loaded.time_embedding.label_mean.weight, model.time_embedding.label_mean.weight)
