"""MusicLALM: prompts and labels, loss, generation, time embedding, LoRA and freezing, save/load."""

import json

import numpy as np
import pytest
import torch

from must.errors import ConfigError, MustError
from must.models.config import LoraConfig, ModelConfig
from must.models.lalm import MusicLALM

SR = 16000


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def _lora_cfg():
    cfg = ModelConfig()
    cfg.llm.lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    cfg.encoder.lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(ModelConfig()).eval()


@pytest.fixture(scope="module")
def encoding(model):
    with torch.no_grad():
        return model.encode_audio([_noise(12.0), _noise(6.0, 1)], SR)


def test_labels_are_the_answer_and_eos_only(model, encoding):
    out = model.prompt_inputs(encoding, ["When does the bass first appear?", "Q?"], ["1:23", "B"])
    tok = model.tokenizer
    lab = out["labels"][0]
    kept = lab[lab != -100].tolist()
    assert kept == tok("1:23", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert tok.convert_ids_to_tokens(kept[:4]) == ["1", ":", "2", "3"]  # digits tokenise one by one
    # right padding: the shorter row ends with zeros in the mask
    assert out["attention_mask"][1, -1] == 0 and out["attention_mask"][0, -1] == 1
    # row length = prompt text + 30 audio tokens (2.5/s x 12 s) + answer + EOS
    n_audio = int(encoding.mask[0].sum())
    assert n_audio == 30
    assert out["inputs_embeds"].shape[-1] == model.hidden_size


def test_prompt_embeds_are_left_padded_and_end_with_the_assistant_header(model, encoding):
    p = model.prompt_embeds(encoding, ["a much longer question than the other one", "Q?"])
    assert p["attention_mask"][1, 0] == 0 and p["attention_mask"][:, -1].tolist() == [1, 1]
    header = model.tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    tail = model.llm.get_input_embeddings()(torch.tensor(header))
    assert torch.allclose(p["inputs_embeds"][1, -len(header) :], tail)


def test_loss_trains_projector_from_a_cached_encoding(model, encoding):
    model.train()
    try:
        out = model(encoding.detach(), ["When?", "What?"], ["0:07", "A"])
        out.loss.backward()
    finally:
        model.eval()
    assert out.loss.item() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert model.time_embedding.gates.grad.abs().sum() > 0
    model.zero_grad()


def test_digit_time_embedding_uses_the_llm_embeddings_in_order(model):
    te, emb = model.time_embedding, model.llm.get_input_embeddings()
    with torch.no_grad():
        out = te(torch.tensor([[83.2, 201.0]]), emb)
        ids = model.tokenizer("1:23", add_special_tokens=False).input_ids
        expect = (emb(torch.tensor(ids)) * te.gates[-len(ids) :]).sum(0)
    assert torch.allclose(out[0, 0], expect, atol=1e-6)
    assert not torch.allclose(out[0, 0], out[0, 1])  # 1:23 vs 3:21 differ though the digits are the same


def test_sinusoidal_and_none_time_embeddings():
    cfg = ModelConfig()
    cfg.time_embedding.kind = "sinusoidal"
    m = MusicLALM.from_config(cfg)
    assert m.time_embedding(torch.tensor([[1.0, 2.0]])).shape == (1, 2, m.hidden_size)
    cfg.time_embedding.kind = "none"
    assert MusicLALM.from_config(cfg).time_embedding(torch.tensor([[1.0]])) is None


def test_generate_batched_with_several_sequences_encodes_audio_once(model, monkeypatch):
    calls = []
    orig = model.encoder.encode_frames
    monkeypatch.setattr(model.encoder, "encode_frames", lambda *a, **k: calls.append(1) or orig(*a, **k))
    out = model.generate(
        [_noise(5.0), _noise(8.0, 2)],
        ["When?", "What?"],
        max_new_tokens=4,
        do_sample=True,
        temperature=0.9,
        top_p=0.95,
        num_return_sequences=3,
        sample_rate=SR,
    )
    assert len(calls) == 1
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    assert all(isinstance(s, str) for o in out for s in o)


def test_greedy_generation_is_deterministic(model, encoding):
    a = model.generate(encoding, ["When?", "What?"], max_new_tokens=4)
    b = model.generate(encoding, ["When?", "What?"], max_new_tokens=4)
    assert a == b


def test_lora_freezes_base_weights_and_trains_only_adapters():
    torch.manual_seed(0)
    m = MusicLALM.from_config(_lora_cfg())
    llm_trainable = [n for n, p in m.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    bb = [n for n, p in m.encoder.backbone.named_parameters() if p.requires_grad]
    assert bb and all("lora_" in n for n in bb)
    assert all(p.requires_grad for p in m.projector.parameters())
    assert all(p.requires_grad for p in m.encoder.transition_head.parameters())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m.train()
    enc = m.encode_audio([_noise(4.0)], SR)
    m(enc, ["When?"], ["0:01"]).loss.backward()
    opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert any(".lora_B." in n and n.startswith("llm.") for n in moved)
    assert not any(n.startswith("llm.") and "lora_" not in n for n in moved)
    assert not any(n.startswith("encoder.backbone.") and "lora_" not in n for n in moved)


def test_trainable_freeze_and_param_groups_by_pattern():
    m = MusicLALM.from_config(ModelConfig())
    n = m.trainable(["projector.*", "encoder.transition_head.*"])
    names = {k for k, p in m.named_parameters() if p.requires_grad}
    assert n == len(names) == 8 and all(
        k.startswith(("projector.", "encoder.transition_head.")) for k in names
    )
    m.freeze("encoder.*")
    assert {k for k, p in m.named_parameters() if p.requires_grad} == {
        k for k in names if k.startswith("projector.")
    }
    m.trainable(["projector.*", "llm.*"])
    groups = m.param_groups({"projector.*": 1e-3}, default_lr=1e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("projector.*", 1e-3), ("default", 1e-5)]
    assert len(groups[0]["params"]) == 4
    with pytest.raises(ConfigError, match="nosuch"):
        m.freeze(["nosuch.*"])


def test_save_load_round_trip_identical_logits_with_adapters(tmp_path):
    torch.manual_seed(0)
    m = MusicLALM.from_config(_lora_cfg())
    with torch.no_grad():  # make the adapters non-trivial so that losing them would show
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m.eval()
    enc = m.encode_audio([_noise(7.0)], SR)
    logits = m(enc, ["When does the piano enter?"], ["0:03"]).logits
    m.save_pretrained(tmp_path / "model")
    # the adapters ship as PEFT folders of their own, with the recipe's rank and targets
    for part, r in (("llm", 4), ("encoder", 2)):
        adapter = json.loads((tmp_path / "model" / "adapters" / part / "adapter_config.json").read_text())
        assert adapter["r"] == r and set(adapter["target_modules"]) == {"q_proj", "v_proj"}, part
    m2 = MusicLALM.from_pretrained(tmp_path / "model").eval()
    enc2 = m2.encode_audio([_noise(7.0)], SR)
    assert torch.equal(enc.features, enc2.features) and torch.equal(enc.times, enc2.times)
    assert torch.equal(logits, m2(enc2, ["When does the piano enter?"], ["0:03"]).logits)
    # merged export: no adapters, same function (up to float rounding)
    m.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged" / "adapters").exists()
    m3 = MusicLALM.from_pretrained(tmp_path / "merged").eval()
    assert m3.cfg.llm.lora.r == 0
    assert not any("lora_" in n for n, _ in m3.named_parameters())
    assert torch.allclose(
        logits,
        m3(m3.encode_audio([_noise(7.0)], SR), ["When does the piano enter?"], ["0:03"]).logits,
        atol=1e-4,
    )


def test_peft_can_load_the_saved_llm_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = MusicLALM.from_config(_lora_cfg())
    m.save_pretrained(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "llm"))
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapters" / "llm"))
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    ours = dict(m.llm.named_parameters())["model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert torch.equal(dict(peft_model.named_parameters())[name], ours)


def test_missing_or_wrong_model_folder_is_named(tmp_path):
    with pytest.raises(MustError, match="model folder not found: .*nope"):
        MusicLALM.from_pretrained(tmp_path / "nope")
    (tmp_path / "wrong").mkdir()
    with pytest.raises(MustError, match="wrong is not a must model folder"):
        MusicLALM.from_pretrained(tmp_path / "wrong")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "must_config.json").write_text(json.dumps({"format": "must-lalm", "model": {}}))
    with pytest.raises(MustError, match="incomplete: must.safetensors is missing"):
        MusicLALM.from_pretrained(tmp_path / "bad")
    cfg = ModelConfig()
    cfg.llm.source = str(tmp_path / "no_llm_here")
    with pytest.raises(MustError, match="LLM folder not found: .*no_llm_here"):
        MusicLALM.from_config(cfg)


def test_from_config_accepts_a_plain_dict_and_rejects_unknown_keys():
    m = MusicLALM.from_config({"llm": {"layers": 2}, "sampling": {"tokens_per_second": 1.0}})
    assert m.llm.config.num_hidden_layers == 2 and m.cfg.sampling.tokens_per_second == 1.0
    with pytest.raises(MustError, match="nosuchkey"):
        MusicLALM.from_config({"nosuchkey": 1})


def test_bfloat16_llm_beside_a_float32_projector():
    cfg = ModelConfig()
    cfg.llm.dtype = "bfloat16"
    m = MusicLALM.from_config(cfg).eval()
    assert m.llm.dtype == torch.bfloat16 and m.projector[0].weight.dtype == torch.float32
    enc = m.encode_audio([_noise(3.0)], SR)
    assert m(enc, ["When?"], ["0:01"]).loss.dtype in (torch.float32, torch.bfloat16)
    assert len(m.generate(enc, ["When?"], max_new_tokens=2)[0]) == 1


@pytest.mark.parametrize(
    "override,key",
    [
        ({"sampling": {"mode": "random"}}, "model.sampling.mode"),
        ({"sampling": {"uniform_floor": 1.5}}, "model.sampling.uniform_floor"),
        ({"host": {"kind": "gemini"}}, "model.host.kind"),
        ({"encoder": {"window_seconds": 1.0}}, "model.encoder.window_seconds"),
        ({"question_position": "middle"}, "model.question_position"),
    ],
)
def test_bad_values_name_the_recipe_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MusicLALM.from_config(override)


@pytest.mark.parametrize("position,in_before,in_after", [
    ("after", False, True), ("before", True, False), ("both", True, True)])
def test_question_position_orders_the_user_turn(position, in_before, in_after):
    m = MusicLALM.from_config({"question_position": position})
    q = "When does the bass start?"
    before, after = m.prompt_parts(q)  # the text on either side of the music tokens
    assert (q in before, q in after) == (in_before, in_after)
    assert after.endswith("<|im_start|>assistant\n")  # the question never lands after the generation prompt



def test_question_position_survives_save_and_load(tmp_path):
    m = MusicLALM.from_config({"question_position": "before"})
    m.save_pretrained(tmp_path / "m")
    loaded = MusicLALM.from_pretrained(tmp_path / "m")
    assert loaded.cfg.question_position == "before"
    assert loaded.prompt_parts("q?") == m.prompt_parts("q?")
