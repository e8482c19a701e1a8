"""benchmarks/token_loss.py: answer tokens are grouped by what they are, and the losses are per token."""

import importlib.util
import math
from pathlib import Path

import torch

from tests._tiny import TINY_MODEL

_spec = importlib.util.spec_from_file_location(
    "token_loss", Path(__file__).resolve().parents[1] / "benchmarks" / "token_loss.py")
tl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tl)


def test_time_tokens_are_numbered_in_order_and_words_keep_their_name():
    names = ["on", "s", "et", "Ġbass", "<|t12|>", "ĠâĨĴ", "<|t12|>", "<|im_end|>"]
    assert tl.token_kinds(names) == ["on", "s", "et", "Ġbass", "time1", "ĠâĨĴ", "time2", "<|im_end|>"]


def test_question_losses_are_the_teacher_forced_loss_of_each_answer_token():
    from must.models.lalm import MusicLALM

    torch.manual_seed(0)
    model = MusicLALM.from_config({**TINY_MODEL, "time_embedding": {"kind": "tokens"},
                                   "answer_format": "grounded"}).eval()
    wave = torch.randn(16000 * 6) * 0.1
    enc = model.encode_audio([wave], 16000, stochastic=False)
    names, ce = tl.question_losses(model, enc, "When does the bass enter?", "onset bass 0:02 → 0:02")
    assert tl.token_kinds(names).count("time1") == 1 and tl.token_kinds(names).count("time2") == 1
    assert len(names) == len(ce) == len(model.text_ids("onset bass 0:02 → 0:02")) + 1  # + EOS
    # Their mean is the model's own answer-only loss on the same prompt.
    with torch.no_grad():
        loss = model(enc, ["When does the bass enter?"], ["onset bass 0:02 → 0:02"]).loss.item()
    assert math.isclose(sum(ce) / len(ce), loss, rel_tol=1e-4)
