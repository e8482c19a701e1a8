"""GRPO's stage contract with the other stages: ``train/loss`` logged (and a NaN caught), the shared optimizer
and schedule stepped by hand, the policy protocol checked, rewards chosen, weighted and configured from the recipe."""

import math
from typing import get_args

import lightning as L
import pytest
import torch
from test_grpo_stage import DATA, char_tokenizer, lora_policy, tiny_lm, varied

from must.config import load_recipe, stage_options
from must.errors import ConfigError, MustError
from must.resume import FiniteLossCallback
from must.rewards import REWARDS, build_rewards
from must.rl.losses import reward_name
from must.rl.policy import Policy, TextPolicy
from must.runner import _check_finite
from must.stages.grpo import GRPOStage, Options
from must.stages.options.grpo import RewardName

SMALL = {"batch_size": 2, "num_generations": 3, "max_completion_length": 4, "refill_groups": False}


def trainer(steps, callbacks=()):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", callbacks=list(callbacks))


class Record(L.Callback):
    """The loss each training_step returned and the learning rate each optimiser step ran with."""

    def __init__(self):
        self.losses, self.lrs = [], []

    def on_train_batch_start(self, trainer, module, *a):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer, module, outputs, *a):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def test_train_loss_is_the_loss_that_was_optimised():
    rec = Record()
    t = trainer(2, [rec])
    t.fit(GRPOStage(lora_policy(), [varied], DATA, Options(**SMALL, lr=5e-2)))
    assert "train/loss" in t.callback_metrics and "loss" not in t.callback_metrics
    assert float(t.callback_metrics["train/loss"]) == pytest.approx(rec.losses[-1], abs=1e-6)
    assert rec.losses[-1] != 0.0


def nan_policy():
    policy = lora_policy()
    with torch.no_grad():
        for n, p in policy.lm.named_parameters():
            if "lora_B" in n:
                p.fill_(math.nan)  # every forward now yields NaN logits, so the first loss is NaN
    return policy


def test_a_nan_loss_is_caught_as_in_the_other_stages():
    with pytest.raises(MustError, match="training loss became nan at step 0"):
        trainer(3, [FiniteLossCallback()]).fit(GRPOStage(nan_policy(), [varied], DATA, Options(**SMALL)))
    t = trainer(1)  # without the callback the runner's end-of-stage check reads train/loss
    t.fit(GRPOStage(nan_policy(), [varied], DATA, Options(**SMALL)))
    assert math.isnan(float(t.callback_metrics["train/loss"]))
    stage = type("Stage", (), {"name": "rl"})()
    with pytest.raises(MustError, match="stage 'rl': training loss became nan"):
        _check_finite(t, stage)


def test_shared_optimizer_warmup_and_lrs_globs_are_stepped_by_hand():
    rec = Record()
    opts = Options(**SMALL, lr=0.1, warmup_steps=2, schedule="constant", lrs={"lm.*lora_A*": 0.2},
                   weight_decay=0.01)
    t = trainer(3, [rec])
    t.fit(GRPOStage(lora_policy(), [varied], DATA, opts))
    assert [g["name"] for g in t.optimizers[0].param_groups] == ["lm.*lora_A*", "default"]
    assert all(g["weight_decay"] == 0.01 for g in t.optimizers[0].param_groups)
    # warm-up (step + 1) / 2, then constant; one scheduler step per optimiser step
    assert rec.lrs == [pytest.approx([0.1, 0.05]), pytest.approx([0.2, 0.1]), pytest.approx([0.2, 0.1])]


def test_policy_protocol_is_checked_naming_what_is_missing():
    tok = char_tokenizer()
    assert isinstance(TextPolicy(tiny_lm(len(tok)), tok), Policy)

    class NoGroups(torch.nn.Module):
        lm, tokenizer = tiny_lm(len(tok)), tok

        def encode(self, rows): ...
        def embed(self, items): ...
        def decode(self, ids): ...
        def save_pretrained(self, path): ...

    with pytest.raises(ConfigError, match=r"lacks \['param_groups'\]"):
        GRPOStage(NoGroups(), [varied], DATA, Options(**SMALL))


RECIPE = """
name: r
logger: {kind: none}
stages:
  - name: rl
    kind: grpo
    options: {reward_funcs: [timestamp_reward, must_reward], reward_weights: {must_reward: 0.5}}
"""
TSG = {"task": ["TSG"], "answer": ["0:30"], "duration": [100.0]}


def recipe_rewards(tmp_path, overrides=()):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    stage = load_recipe(path, list(overrides)).stages[0]
    options = stage_options(GRPOStage, stage.options, "stages.rl.options")
    return build_rewards(options.reward_funcs, options.reward_config, "stages.rl.options"), options


def test_recipe_reward_config_changes_the_reward(tmp_path):
    (stamp, router), options = recipe_rewards(tmp_path)
    assert [reward_name(f) for f in (stamp, router)] == ["timestamp_reward", "must_reward"]  # what weights name
    assert options.reward_weights == {"must_reward": 0.5}
    assert stamp([""], ["0:34"], **TSG) == [pytest.approx(math.exp(-4 / 5.0))]  # default time_scale 5 s
    assert router([""], ["0:34"], **TSG) == [pytest.approx(math.exp(-4 / 5.0) + 0.2)]  # + format_weight * 1
    (stamp, router), _ = recipe_rewards(tmp_path, ["stages.rl.options.reward_config={time_scale: 2, format_weight: 0}"])
    assert stamp([""], ["0:34"], **TSG) == [pytest.approx(math.exp(-4 / 2.0))]
    assert router([""], ["0:34"], **TSG) == [pytest.approx(math.exp(-4 / 2.0))]


def test_recipe_reward_names_and_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.rl.options.reward_config.time_scal: not a reward setting"):
        recipe_rewards(tmp_path, ["stages.rl.options.reward_config={time_scal: 2}"])
    with pytest.raises(ConfigError, match=r"options.reward_funcs\[1\]'?: 'nope' is not one of: must_reward, "):
        recipe_rewards(tmp_path, ["stages.rl.options.reward_funcs=[must_reward,nope]"])  # refused when it loads
    assert set(get_args(RewardName)) == set(REWARDS)  # the torch-free names are the functions' names
    with pytest.raises(ConfigError, match=r"x.reward_funcs: unknown \['nope'\]"):
        build_rewards(["nope"], {}, "x")  # called from code, without a recipe
