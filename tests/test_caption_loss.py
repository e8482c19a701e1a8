"""Stage 2's caption loss: one LLM call per row (CPU) gives the losses of the padded all-positions call."""

import numpy as np
import torch

from must.models.lalm import MusicLALM
from must.stages import common
from must.stages.lm_adapt import caption_loss
from tests._tiny import TINY_MODEL

SR = 16000


def test_row_by_row_caption_loss_equals_the_padded_batch():
    torch.manual_seed(0)
    model = MusicLALM.from_config(TINY_MODEL)  # LLM LoRA r 4, zero at the start
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" not in name)  # stage 2's default: LoRA left (frozen, zero) for stage 3
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(int(s * SR)) * 0.1).astype(np.float32) for s in (5.0, 9.0)]
    enc = model.encode_audio(waves, SR)
    prompts, captions = ["Describe this music."] * 2, ["0:00 drums enter", "0:00 bass enters, 0:04 piano plays a long line"]
    fast = caption_loss(model, enc, prompts, captions)
    packed = common.pack_questions(model, enc, [[p] for p in prompts], [[c] for c in captions])
    logits = model.llm(inputs_embeds=packed["inputs_embeds"], attention_mask=packed["attention_mask"],
                       position_ids=packed["position_ids"], use_cache=False).logits
    slow = common.per_block_loss(logits, packed["labels"], packed["block"], packed["n_blocks"])
    assert fast.shape == (2,) and fast[0] != fast[1]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # Zero LoRA adapters switched off for the fit add exactly nothing.
    layers = common.disable_inert_lora(model.llm)
    assert layers
    torch.testing.assert_close(caption_loss(model, enc, prompts, captions), fast, rtol=1e-5, atol=1e-5)
    common.enable_lora(layers)
