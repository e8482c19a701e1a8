"""Time tokens: text round trip, tied LM-head rows, audio time embeddings, save/load, generation text."""

import numpy as np
import pytest
import torch

from must.errors import MustError
from must.models import time_tokens
from must.models.lalm import MusicLALM
from must.timecode import format_interval, format_time
from tests._tiny import TINY_MODEL

SR = 16000
TOKENS = {**TINY_MODEL, "time_embedding": {"kind": "tokens"}, "answer_format": "grounded"}


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(TOKENS).eval()


def test_every_second_of_ten_minutes_round_trips_through_one_token(model):
    for s in range(601):
        text = f"onset bass {format_time(s)} → {format_time(s)}"
        ids = model.text_ids(text)
        times = [i - model.time_embedding.first for i in ids if i >= model.time_embedding.first]
        assert times == [s, s], (s, times)
        assert model.decode([ids]) == [text]


def test_prompts_intervals_and_captions_keep_their_spelling(model):
    for text in ["At 1:12, what changes?", "[0:00-0:25] intro [0:25] drums enter",
                 f"highest arousal {format_interval(20, 35)}, {format_interval(70, 81)} → x",
                 "X 0:40 Y 0:12 Z 1:05 Y → X → Z → E"]:
        assert model.decode([model.text_ids(text)]) == [text]
    # Plain numbers and ratios are not times; a time past the table clamps to its last token.
    assert time_tokens.to_tokens("123 BPM 3:4", 1.0, 601) == "123 BPM 3:4"
    assert time_tokens.to_tokens("at 12:00", 1.0, 601) == f"at{time_tokens.token_name(600)}"


def test_time_logits_are_the_input_embeddings_one_parameter(model):
    first, n = model.time_embedding.first, model.time_embedding.count
    llm = model.llm
    emb = llm.get_input_embeddings().weight
    emb.requires_grad_(True)  # LoRA froze the base weights; the question is where gradients go
    h = torch.randn(2, 3, model.hidden_size, requires_grad=True)
    logits = llm.get_output_embeddings()(h)
    assert torch.allclose(logits[..., first:first + n], h @ emb[first:first + n].T, atol=1e-5)
    llm.zero_grad()
    logits[..., first + 7].sum().backward()
    head = llm.get_output_embeddings().weight
    assert emb.grad[first + 7].abs().sum() > 0  # the input row gets the output's gradient...
    assert head.grad is None or head.grad[first:first + n].abs().sum() == 0  # ...the head's own row none
    emb.requires_grad_(False)


def test_a_time_logit_scale_multiplies_the_time_logits_only():
    torch.manual_seed(0)
    m = MusicLALM.from_config(TOKENS)
    first, n = m.time_embedding.first, m.time_embedding.count
    h = torch.randn(1, 2, m.hidden_size)
    before = m.llm.get_output_embeddings()(h).detach()
    m._tie_handle.remove()
    m._tie_handle = time_tokens.tie_head(m.llm, first, n, scale=3.0)
    after = m.llm.get_output_embeddings()(h).detach()
    torch.testing.assert_close(after[..., first:first + n], 3.0 * before[..., first:first + n])
    torch.testing.assert_close(after[..., :first], before[..., :first], rtol=0, atol=0)


def test_audio_tokens_carry_their_seconds_token_embedding(model):
    enc = model.encode_audio([_noise(9.0)], SR)
    te = model.time_embedding(enc.times, model.llm.get_input_embeddings())
    ids = model.time_embedding.first + enc.times.round().long()
    assert torch.allclose(te, model.llm.get_input_embeddings()(ids))  # the gate starts at ones


def test_time_rows_rise_along_one_direction():
    emb = torch.nn.Embedding(20 + 601, 32)
    time_tokens.init_rows(emb, 20, 601, 1.0)
    rows = emb.weight[20:].detach()
    d = rows[600] - rows[0]
    proj = rows @ (d / d.norm())
    # Later times lie further along one direction: a linear read-out of "when" from the first step.
    assert np.corrcoef(proj.numpy(), np.arange(601))[0, 1] > 0.95


def test_save_and_load_keeps_tokens_tying_and_logits(tmp_path, model):
    enc = model.encode_audio([_noise(7.0)], SR)
    q, a = ["When does the piano first appear?"], ["onset piano 0:03 → 0:03"]
    logits = model(enc, q, a).logits
    model.save_pretrained(tmp_path / "m")
    m2 = MusicLALM.from_pretrained(tmp_path / "m").eval()
    assert len(m2.tokenizer) == len(model.tokenizer) and m2.time_embedding.first == model.time_embedding.first
    assert torch.equal(logits, m2(m2.encode_audio([_noise(7.0)], SR), q, a).logits)


def test_a_tokenizer_without_time_tokens_is_a_named_error():
    from must.models.tokenizer import build_tiny_tokenizer

    with pytest.raises(MustError, match="time tokens"):
        time_tokens.first_id(build_tiny_tokenizer(), 601)


def test_grounded_generation_splits_trace_and_answer(model):
    assert model.split_answer("onset bass 0:12 → 0:12") == ("0:12", "onset bass 0:12 → 0:12", None)
    answer, trace, reason = model.split_answer("onset bass 0:12")
    assert answer == "" and trace == "onset bass 0:12" and "no final answer" in reason
    texts = model.generate(model.encode_audio([_noise(5.0)], SR), ["When?"], max_new_tokens=4)
    assert isinstance(texts[0][0], str) and "<|t" not in texts[0][0]  # time tokens come out as M:SS


def _pretrained_folder(path):
    """A SmolLM2-shaped Llama folder (tied embeddings) with its own tokenizer, as a hub download would be."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from must.models.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("host", ["none", "qwen2_audio"])
def test_pretrained_llms_and_hosts_get_the_tokens_and_keep_them(tmp_path, host):
    torch.manual_seed(0)
    # With the time pointer on too (small.yaml's SmolLM2 and the host LALMs): it hooks their final norm and head.
    cfg = {**TOKENS, "host": {"kind": host}, "time_embedding": {"kind": "tokens", "pointer": True}}
    if host == "none":
        cfg["llm"] = {"source": str(_pretrained_folder(tmp_path / "smol")), "lora": {"r": 4}}
    m = MusicLALM.from_config(cfg).eval()
    first, n = m.time_embedding.first, m.time_embedding.count
    assert m.tokenizer.convert_ids_to_tokens(first + 83) == "<|t83|>"
    assert m.llm.get_input_embeddings().weight.shape[0] >= first + n
    if host == "none":  # a tied model needs no hook: the head is the embedding
        assert m.llm.get_output_embeddings().weight is m.llm.get_input_embeddings().weight
    enc = m.encode_audio([_noise(6.0)], SR)
    q, a = ["At 0:03, what changes?"], ["0:03 → A"]
    logits = m(enc, q, a).logits
    m.save_pretrained(tmp_path / "out")
    m2 = MusicLALM.from_pretrained(tmp_path / "out").eval()
    assert len(m2.tokenizer) == len(m.tokenizer)
    assert torch.equal(logits, m2(m2.encode_audio([_noise(6.0)], SR), q, a).logits)
    assert m2.pointer is not None and m2.pointer.keys is not None  # the pointer ran in the loaded model
