"""Host LALM adapters: Qwen2-Audio and the Qwen2.5-Omni thinker, tiny random configs of the real classes."""

import numpy as np
import pytest
import torch

from must.models.config import ModelConfig
from must.models.lalm import MusicLALM

SR = 16000


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.mark.parametrize(
    "kind,cls",
    [
        ("qwen2_audio", "Qwen2AudioForConditionalGeneration"),
        ("qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration"),
    ],
)
def test_host_forward_generate_and_round_trip(kind, cls, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg.host.kind = kind
    m = MusicLALM.from_config(cfg).eval()
    assert type(m.llm).__name__ == cls
    # the host tower is frozen, everything else of the LLM trains (no LoRA asked)
    assert not any(p.requires_grad for n, p in m.named_parameters() if ".audio_tower." in n)
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith("llm.model.language_model."))

    enc = m.encode_audio([_noise(35.0), _noise(4.0, 1)], SR)
    # host tokens: 25 per second over the whole track (its 30 s windows joined), beside 2.5/s MusT tokens
    assert enc.host_mask.sum(1).tolist() == [875, 100]
    assert enc.mask.sum(1).tolist() == [88, 10]
    inputs = m.prompt_inputs(enc, ["When?", "What?"], ["0:12", "A"])
    n_text = int(inputs["attention_mask"][1].sum()) - 100 - 10
    assert n_text > 0
    m.train()
    out = m(enc, ["When?", "What?"], ["0:12", "A"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grad = m.projector[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0  # the loss reaches the projector
    m.eval()
    texts = m.generate(enc, ["When?", "What?"], max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert len(texts) == 2 and all(len(t) == 2 for t in texts)

    m.save_pretrained(tmp_path)
    m2 = MusicLALM.from_pretrained(tmp_path).eval()
    assert type(m2.llm).__name__ == cls
    with torch.no_grad():
        a = m(enc, ["When?", "What?"], ["0:12", "A"]).logits
        b = m2(enc, ["When?", "What?"], ["0:12", "A"]).logits
    assert torch.equal(a, b)


def test_qwen2_audio_host_window_never_exceeds_its_tower():
    from must.models.host import host_audio_embeds
    from must.models.llm import build_llm

    cfg = ModelConfig()
    cfg.host.kind = "qwen2_audio"
    llm, _ = build_llm(cfg.llm, cfg.host)
    # asked for 60 s windows, the tower holds 30 s: 70 s still gives 25 tokens per second throughout
    _, mask = host_audio_embeds(llm, "qwen2_audio", [_noise(70.0)], 60.0)
    assert mask.sum().item() == 1750
