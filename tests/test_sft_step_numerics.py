"""The SFT step's speed-ups change no number: the tiny recipe's SFT losses on a fixed batch and seed.

The golden losses were recorded with the code before the speed-ups (commit 4454b78, one thread; re-recorded
for the grounded, time-token tiny recipe at the commit before the speed-ups were merged into it, where the
merged code matched them to 1.3e-7 relative; re-recorded once more when the traces gained change keys and LTR's lost the option text,
``X onset kick 0:40``, which changes the batch's targets, not the step's arithmetic):
three steps of ``SFTStage.training_step`` + backward + AdamW on the first batch of the tiny recipe's
``sft`` stage (model built from the recipe's ``model`` block, ``torch.manual_seed(0)``). The third
loss depends on two updates, so gradients are checked too.
"""

import warnings
from pathlib import Path

import pytest
import torch

from must.config import load_recipe, stage_options
from must.models.lalm import MusicLALM
from must.stages import common
from must.stages.sft import SFTStage

ROOT = Path(__file__).resolve().parents[1]
TINY_SFT_STEPS = 450  # the tiny recipe's sft trainer.max_steps (the cosine schedule's length)
GOLDEN = [7.54056453704834, 7.166797637939453, 6.988502502441406]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden values were recorded on one thread (BLAS splits change last digits)
    yield
    torch.set_num_threads(n)


def tiny_sft_stage() -> SFTStage:
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    spec = next(s for s in recipe.stages if s.kind == "sft")
    # The encoder as it was when the golden values were recorded: frame_stats (in tiny.yaml since) widens the
    # encoder's features and so changes the projector's shape and every random draw after it.
    recipe.model.encoder.frame_stats = False
    te = recipe.model.time_embedding  # the golden losses were recorded without the time pointer
    te.pointer = te.pointer_context = te.pointer_prompt = te.pointer_options = te.read_prompt = False
    torch.manual_seed(0)
    stage = SFTStage(MusicLALM.from_config(recipe.model), recipe.data,
                     stage_options(SFTStage, spec.options, "sft options"), recipe.seed)
    return stage


def test_tiny_sft_losses_match_the_recorded_ones(one_thread):
    stage = tiny_sft_stage()
    opt = common.optimizer_config(stage.model, stage.options, TINY_SFT_STEPS)["optimizer"]
    batch = next(iter(stage.train_dataloader()))
    stage.on_train_start()  # as Trainer.fit does (it switches off the frozen, zero LoRA adapters)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        for step in range(3):
            loss = stage.training_step(batch, step)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses == pytest.approx(GOLDEN, rel=1e-6, abs=1e-6)


def test_inert_lora_is_switched_off_only_when_it_adds_exactly_zero():
    from must.stages import common

    torch.manual_seed(0)
    model = MusicLALM.from_config({"llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                                           "intermediate_size": 64, "lora": {"r": 4}}})
    x = torch.randn(1, 5, 32)

    def out():
        return model.llm(inputs_embeds=x, use_cache=False).logits

    common.set_trainable(model, ["llm.*"], ["*lora_*"])
    before = out()
    layers = common.disable_inert_lora(model.llm)
    assert layers and all(m.disable_adapters for m in layers)
    torch.testing.assert_close(out(), before, rtol=0, atol=0)  # zero adapters: the very same logits
    common.enable_lora(layers)
    assert not any(m.disable_adapters for m in layers)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # still frozen

    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora_b[0, 0] = 0.5  # a trained adapter changes the output: it must stay on
    assert common.disable_inert_lora(model.llm) == []
    with torch.no_grad():
        lora_b.zero_()
    common.set_trainable(model, ["*lora_*"])  # adapters that train must stay on too
    assert common.disable_inert_lora(model.llm) == []


def test_sft_fit_leaves_the_adapters_on_and_frozen():
    stage = tiny_sft_stage()
    stage.on_train_start()
    assert stage._inert_lora  # the tiny recipe's SFT keeps its LoRA adapters frozen at zero
    stage.on_train_end()
    lora = [p for n, p in stage.model.named_parameters() if "lora_" in n]
    assert lora and not any(p.requires_grad for p in lora)
    assert not any(m.disable_adapters for m in stage.model.llm.modules() if hasattr(m, "lora_A"))


def test_loss_from_the_answer_logits_only_and_row_by_row_equals_the_full_one():
    from must.stages import common

    torch.manual_seed(0)
    model = MusicLALM.from_config({"encoder": {"width": 32, "layers": 1, "heads": 2, "n_mels": 16},
                                   "llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                                           "intermediate_size": 64}}).eval()
    waves = [torch.randn(16000 * (5 + i)).numpy() * 0.1 for i in range(2)]
    enc = model.encode_audio(waves, 16000)
    packed = common.pack_questions(model, enc, [["When does the bass enter?", "Which change is at 0:03?"],
                                                ["When is it calmest?"]], [["0:02", "B"], ["0:01-0:04"]])
    logits, positions = common.answer_logits(model.llm, packed)
    assert positions is not None and logits.shape[1] == len(positions) < packed["labels"].shape[1] / 2
    full = model.llm(inputs_embeds=packed["inputs_embeds"], attention_mask=packed["attention_mask"],
                     position_ids=packed["position_ids"], use_cache=False).logits
    args = (packed["labels"], packed["block"], packed["n_blocks"])
    expected = common.per_block_loss(full, *args)
    torch.testing.assert_close(common.per_block_loss(logits, *args, positions), expected)
    assert packed["lengths"].tolist()[1] < packed["inputs_embeds"].shape[1]  # the second row is padded
    torch.testing.assert_close(common.block_losses(model.llm, packed, by_row=True), expected)  # no padding
    torch.testing.assert_close(common.block_losses(model.llm, packed), expected)
