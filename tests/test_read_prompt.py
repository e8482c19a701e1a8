"""Prompt time reads (``time_embedding.read_prompt``): a prompt's time token carries the audio around its time."""

import pytest
import torch

from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.models.prompts import pack_questions
from tests._tiny import SR, TINY_MODEL, noise, reloaded

READ = {**TINY_MODEL, "answer_format": "grounded", "time_embedding": {"kind": "tokens", "read_prompt": True}}
Q = "What change happens in the music at around 0:03?\nA. The drums come in.\nB. The bass drops out."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(READ).eval()


def test_the_asked_times_token_gains_the_mean_audio_before_and_after_it_and_nothing_else_moves(model):
    te = model.time_embedding
    enc = model.encode_audio([noise(8.0)], SR)
    with torch.no_grad():
        plain = pack_questions(model, enc, [[Q, "When does the bass enter?"]], [["0:03 onset kick → A", "onset bass 0:05 → 0:05"]])
        torch.nn.init.normal_(te.read_before.weight)
        torch.nn.init.normal_(te.read_after.weight)
        try:
            read = pack_questions(model, enc, [[Q, "When does the bass enter?"]],
                                  [["0:03 onset kick → A", "onset bass 0:05 → 0:05"]])
            audio = model.project(enc)[0][enc.mask[0]]
            times = enc.times[0][enc.mask[0]]
            before = audio[(times >= 0.0) & (times < 3.0)].mean(0)
            after = audio[(times >= 3.0) & (times < 6.0)].mean(0)
            want = te.read_before(before) + te.read_after(after)
        finally:
            torch.nn.init.zeros_(te.read_before.weight)
            torch.nn.init.zeros_(te.read_after.weight)
    diff = (read["inputs_embeds"] - plain["inputs_embeds"])[0]
    moved = diff.abs().sum(-1).nonzero().squeeze(1).tolist()
    assert len(moved) == 1  # the prompt's one time token; the answers' time tokens (0:03, 0:05) are not read
    pos = moved[0]
    assert read["labels"][0, pos] == -100 and read["block"][0, pos] == 0  # the first question's prompt
    torch.testing.assert_close(diff[pos], want, rtol=1e-4, atol=1e-5)


def test_reads_start_at_zero_and_learn(model):
    enc = model.encode_audio([noise(6.0)], SR)
    model.zero_grad()
    out = model(enc, [Q], ["0:03 onset kick → A"])
    assert model.time_embedding.read_after.weight.abs().max() == 0  # zero at the start: the model is unchanged
    out.loss.backward()
    assert model.time_embedding.read_after.weight.grad.abs().max() > 0  # …and the SFT loss reaches the maps
    assert model.time_embedding.read_before.weight.grad.abs().max() > 0
    model.zero_grad()


def test_read_prompt_needs_time_tokens_and_a_window():
    with pytest.raises(ConfigError, match="read_prompt.*kind: tokens"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "digits", "read_prompt": True}})
    with pytest.raises(ConfigError, match=r"read_seconds = 0.0 is out of range"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "read_prompt": True, "read_seconds": 0.0}})


def test_save_and_load_keep_the_read_maps_and_the_logits(tmp_path, model):
    te = model.time_embedding
    with torch.no_grad():
        torch.nn.init.normal_(te.read_after.weight)
    try:
        m2, _ = reloaded(model, tmp_path / "m", Q, "0:03 onset kick → A")
    finally:
        with torch.no_grad():
            torch.nn.init.zeros_(te.read_after.weight)
    assert m2.time_embedding.read_after.weight.abs().max() > 0  # a nonzero read went through the folder
