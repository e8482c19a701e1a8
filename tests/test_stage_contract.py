"""The stage contract: one protocol and one option vocabulary for the four stages and a user's stage."""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from must.config import STAGE_KINDS, load_recipe, stage_class, stage_options
from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.plan import apply_freezing
from must.runner import run_recipe
from must.stages import common
from must.stages.options.groups import Evaluation, Optimisation, Parameters
from must.stages.protocol import check_stage, protocol_errors
from tests._stages import toy_recipe

ROOT = Path(__file__).resolve().parents[1]
GROUPS = (Optimisation, Parameters, Evaluation)


@pytest.mark.parametrize("kind", [*STAGE_KINDS, "tests._stages:Producer", "tests._stages:Graded"])
def test_every_stage_meets_the_protocol(kind):
    assert protocol_errors(stage_class(kind)) == []


@pytest.mark.parametrize("kind", list(STAGE_KINDS))
def test_every_stage_speaks_the_shared_option_names(kind):
    options = stage_class(kind).Options
    hints = typing.get_type_hints(options)
    for group in GROUPS:
        for f in fields(group):
            assert f.name in {g.name for g in fields(options)}, f"{kind} lacks shared option {f.name}"
            # Same meaning, same type (a stage may change the default only).
            assert str(hints[f.name]).replace("typing.", "") == str(typing.get_type_hints(group)[f.name]).replace("typing.", "")


def test_a_class_off_the_protocol_is_refused_naming_each_gap():
    class Half:
        @classmethod
        def from_context(cls, ctx):
            return cls()

        def evaluate(self, out_dir):  # the protocol's evaluate takes (out_dir, name)
            return {}

    with pytest.raises(ConfigError, match=r"stages\[0\]\.kind.*no save_model\(path\); evaluate must take \(out_dir, name\)"):
        check_stage(Half, "stages[0].kind")


def test_runner_scores_before_and_after_through_the_stages_evaluate(tmp_path):
    path = toy_recipe(tmp_path,
                      {"name": "a", "kind": "tests._stages:Graded", "options": {"eval_init": True, "eval_final": False},
                       "trainer": {"max_steps": 3}},
                      {"name": "b", "kind": "tests._stages:Graded", "init_from": "a", "options": {"eval_init": False},
                       "trainer": {"max_steps": 2}})
    records = run_recipe(load_recipe(path))
    out = tmp_path / "out"
    # a: scored once, before training (a fresh model loaded nothing), and not after.
    assert records["a"]["eval"] == {"init": {"loaded_sum": None}}
    assert json.loads((out / "a" / "eval_init" / "scores.json").read_text()) == {"loaded_sum": None}
    assert not (out / "a" / "eval").exists()
    # b: scored after training only; it started from a's saved weights.
    saved = torch.load(out / "a" / "model" / "weights.pt", weights_only=True)
    assert list(records["b"]["eval"]) == ["test"]
    assert records["b"]["eval"]["test"]["loaded_sum"] == pytest.approx(float(sum(v.sum() for v in saved.values())))


def test_learning_rate_schedules_on_hand_computed_steps():
    warm = [common.lr_factor(s, warmup_steps=2, max_steps=10) for s in (0, 1, 2, 6, 10, 20)]
    # warm-up 1/2, 2/2; then cosine from 1 at step 2 to 0.1 at step 10 (midway, step 6: 0.1 + 0.9 * 0.5 = 0.55).
    assert warm == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1, 0.1])
    flat = [common.lr_factor(s, warmup_steps=0, max_steps=10, schedule="constant") for s in (0, 5, 10)]
    assert flat == [1.0, 1.0, 1.0]


def test_plan_trains_exactly_what_each_stage_of_the_tiny_recipe_trains():
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    for spec in recipe.stages:
        cls = stage_class(spec.kind)
        options = stage_options(cls, spec.options, spec.name)
        torch.manual_seed(0)
        planned = MusicLALM.from_config(recipe.model)
        apply_freezing(cls, planned, recipe, options)
        torch.manual_seed(0)
        built = MusicLALM.from_config(recipe.model)
        if spec.kind == "grpo":  # its stage needs a policy and rewards; its from_context applies exactly this
            from must.stages.grpo import set_trainable

            set_trainable(built, *cls.train_globs(built, options))
        else:
            cls(built, recipe.data, options)
        want = {n for n, p in built.named_parameters() if p.requires_grad}
        assert want, spec.name
        assert {n for n, p in planned.named_parameters() if p.requires_grad} == want, spec.name
