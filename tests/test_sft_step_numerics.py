"""The SFT step's speed-ups change no number: the tiny recipe's SFT losses on a fixed batch and seed.

The golden losses were recorded with the code before the speed-ups (commit 4454b78, one thread):
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
from must.stages.sft import SFTStage

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = [7.070343017578125, 6.693443298339844, 6.446084499359131]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden values were recorded on one thread (BLAS splits change last digits)
    yield
    torch.set_num_threads(n)


def tiny_sft_stage() -> SFTStage:
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    spec = next(s for s in recipe.stages if s.kind == "sft")
    torch.manual_seed(0)
    stage = SFTStage(MusicLALM.from_config(recipe.model), recipe.data,
                     stage_options(SFTStage, spec.options, "sft options"), recipe.seed)
    stage.max_steps = spec.trainer.max_steps
    return stage


def test_tiny_sft_losses_match_the_recorded_ones(one_thread):
    stage = tiny_sft_stage()
    opt = stage.configure_optimizers()["optimizer"]
    batch = next(iter(stage.train_dataloader()))
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
