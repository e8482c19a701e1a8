"""Option pointer (``time_embedding.pointer_options``): answer letters point at their option lines' last tokens."""

import pytest
import torch

from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.models.prompts import option_ends, pack_questions
from must.models.time_pointer import TimePointer
from must.stages import common
from tests._tiny import SR, TINY_MODEL, noise, reloaded

OPTIONS = {**TINY_MODEL, "answer_format": "grounded",
           "time_embedding": {"kind": "tokens", "pointer": True, "pointer_prompt": True, "pointer_options": True}}
LTR_Q = ("What change happens in the music at around 0:03?\nA. The drums come in.\nB. No noticeable change happens."
         "\nC. The bass drops out.\nD. The music gets louder.")
GTO_Q = ("Three transitions occur in this audio:\nX: The drums come in.\nY: The music gets louder.\n"
         "Z: The bass drops out.\nWhat is the correct temporal order?\nA. X → Y → Z\nB. X → Z → Y\nC. Y → X → Z\n"
         "D. Y → Z → X\nE. Z → X → Y\nF. Z → Y → X")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MusicLALM.from_config(OPTIONS).eval()
    with torch.no_grad():  # q and k start random; scale them so the pointer visibly moves the logits
        m.pointer.q.weight.mul_(8.0)
    return m


def test_option_ends_are_each_option_lines_last_token(model):
    for question, last in [(LTR_Q, ["."] * 4), (GTO_Q, ["ĠZ", "ĠY", "ĠZ", "ĠX", "ĠY", "ĠX"])]:
        text = model.prompt_parts(question)[1]  # the user turn's rest, ending in the chat template's <|im_end|>
        ids = model.text_ids(text)
        ends = option_ends(model, text)
        assert [letter for _, letter in ends] == list(range(len(last)))
        assert model.tokenizer.convert_ids_to_tokens([ids[i] for i, _ in ends]) == last
        for i, _ in ends:  # the next token ends the line (a newline, or the template's end of turn)
            assert model.tokenizer.convert_ids_to_tokens(ids[i + 1]) in ("Ċ", "<|im_end|>")
    assert option_ends(model, "(A) louder\n(B) quieter")[1][1] == 1  # "(B) …" is an option too
    assert option_ends(model, "When does the bass enter?") == []
    assert option_ends(model, "X: The drums come in.") == []  # GTO's X/Y/Z lines are not options


def test_letters_gain_their_option_keys_score_and_other_logits_stay(model):
    enc = model.encode_audio([noise(6.0)], SR)
    q, a = [LTR_Q], ["0:03 onset kick → A"]
    p = model.pointer
    with torch.no_grad():
        on = model(enc, q, a).logits
        held, p.letter_ids = p.letter_ids, None
        try:
            off = model(enc, q, a).logits
        finally:
            p.letter_ids = held
    diff = (on - off)[0]
    letters = p.letter_ids[p.letter_ids >= 0]
    moved = diff[:, letters]
    assert moved[:, :8].abs().amin() > 0  # A-D (both spellings) move at every position
    assert moved[:, 8:].abs().max() == 0  # E and F: no such option in an LTR question
    rest = torch.ones(diff.shape[-1], dtype=torch.bool)
    rest[letters] = False
    assert diff[:, rest].abs().max() == 0  # time tokens and words are untouched


def test_per_letter_is_the_option_keys_score_and_zero_without_one():
    p = TimePointer(hidden=4, first=0, count=3, letters=[[10], [11], [12]])
    # Audio tokens of steps 0, 1; option B's line end at position 7 (slot count + 1).
    p.set_rows(torch.tensor([[0, 1, 7]]), torch.tensor([[0, 1, 4]]), torch.tensor([[True, True, False]]))
    scores = torch.tensor([[[0.5, 1.5, 3.0]]])
    slots = p.per_slot(scores, 1)
    assert p.per_letter(slots)[0, 0].tolist() == [0.0, 3.0, 0.0]
    assert p.per_step(scores, 1, slots)[0, 0].tolist() == [0.5, 1.5, 1.5]  # times unchanged by the option key
    assert p.empty.tolist() == [[False, False, True]]


def test_option_keys_use_their_own_map():
    torch.manual_seed(0)
    p = TimePointer(hidden=4, first=0, count=3, letters=[[10], [11]])
    p.set_rows(torch.tensor([[0, 2]]), torch.tensor([[0, 3]]), torch.tensor([[True, False]]))
    states = torch.randn(1, 3, 4)
    p.starts(None, (), {})
    p.capture(None, (), states)
    assert torch.allclose(p.keys[0, 0], p.k(states[0, 0])) and torch.allclose(p.keys[0, 1], p.k_option(states[0, 2]))


@pytest.mark.parametrize("by_row", [False, True])
def test_packed_losses_equal_each_question_alone_with_prompt_and_option_keys(model, by_row):
    """A packed block sees its own prompt's time and option keys only, also where the LM head runs on the
    answer positions alone (``logits_to_keep``) and where each row is cut to its length (``by_row``)."""
    enc = model.encode_audio([noise(6.0)], SR)
    qs = [LTR_Q, "When does the bass enter?", GTO_Q.replace("Three", "3")]
    ans = ["0:03 onset kick → A", "onset bass 0:02 → 0:02",
           "X onset kick 0:01 Y louder 0:03 Z offset bass 0:05 X → Y → Z → A"]
    with torch.no_grad():
        alone = []
        for q, a in zip(qs, ans):
            packed1 = pack_questions(model, enc, [[q]], [[a]])
            alone.append(common.block_losses(model.llm, packed1, pointer=model.pointer))
        packed = pack_questions(model, enc, [qs], [ans])
        together = common.block_losses(model.llm, packed, by_row=by_row, pointer=model.pointer)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_save_and_load_keeps_the_option_keys_and_the_logits(tmp_path, model):
    m2, _ = reloaded(model, tmp_path / "m", GTO_Q, "X onset kick 0:01 Y louder 0:03 Z offset bass 0:05 X → Y → Z → A")
    assert torch.equal(m2.pointer.k_option.weight, model.pointer.k_option.weight)


def test_pointer_options_need_the_pointer():
    with pytest.raises(ConfigError, match="pointer_options.*pointer: true"):
        MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens", "pointer_options": True}})
