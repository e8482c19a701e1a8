"""``must validate`` (and ``must run``, before any work) refuses every value a stage would fail on later, by key."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional

import pytest

from must import config, strategies
from must.cli import main
from must.config import RecipeConfig, StageConfig, load_recipe
from must.errors import ConfigError
from must.literals import choices


def test_strategy_table_matches_lightnings_registry():
    """Every name but ``auto`` and must's FSDP2 ones is one Lightning registers, DeepSpeed entries at the ZeRO stage it configures."""
    from lightning.pytorch.strategies import StrategyRegistry

    assert set(strategies.STRATEGIES) - set(StrategyRegistry) == {"auto", "fsdp2", "model_parallel"}
    ours = {n for n in StrategyRegistry if n.startswith(("ddp", "fsdp", "deepspeed"))}
    assert ours <= set(strategies.STRATEGIES)
    for name in ours:
        entry, params = strategies.STRATEGIES[name], StrategyRegistry[name]["init_params"]
        if entry.family == "deepspeed":
            assert entry.zero_stage == params.get("stage", 2), name
        assert entry.family == {"DDPStrategy": "ddp", "FSDPStrategy": "fsdp",
                                "DeepSpeedStrategy": "deepspeed"}[StrategyRegistry[name]["strategy"].__name__]


@pytest.mark.parametrize("name,ddp,sharded,one_file,gpu_only", [
    ("auto", True, False, True, False),
    ("ddp_find_unused_parameters_true", True, False, True, False),
    ("fsdp", False, True, False, True),
    ("fsdp2", False, True, False, False),
    ("deepspeed_stage_2", False, False, False, True),
    ("deepspeed_stage_3_offload", False, True, False, True),
])
def test_strategy_table_answers(name, ddp, sharded, one_file, gpu_only):
    assert (strategies.is_ddp(name), strategies.sharded_weights(name), strategies.plain_checkpoints(name),
            strategies.strategy(name).gpu_only) == (ddp, sharded, one_file, gpu_only)


# ----------------------------------------------------------------------------------------- through `must validate`

TINY = "recipes/tiny.yaml"
MUST7B = "recipes/must7b.yaml"


def refused(capsys, recipe, *overrides: str) -> str:
    """``must validate`` exits 2; its one error line (no traceback)."""
    assert main(["validate", str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize("override,key,allowed", [
    ("logger.kind=tensorboard", "logger.kind", "wandb, csv, none"),
    ("logger.mode=dryrun", "logger.mode", "auto, online, offline"),
    ("data.source=foo", "data.source", "synthetic, mustbench"),
    ("data.renderer=fluid", "data.renderer", "numpy, gm"),
    ("model.sampling.mode=random", "model.sampling.mode", "dynamic, uniform"),
    ("model.llm.dtype=fp8", "model.llm.dtype", "float32, bfloat16, float16"),
    ("stages.sft.trainer.accelerator=tpu", "stages[2].trainer.accelerator", "auto, cpu, gpu, cuda, mps"),
])
def test_literal_value_refused_naming_key_value_and_allowed_values(capsys, override, key, allowed):
    value = override.split("=", 1)[1]
    assert refused(capsys, TINY, override) == (
        f"error: override '{override}': key '{key}': '{value}' is not one of: {allowed}")


def test_literal_inside_a_list_and_a_number_for_a_string_literal(capsys):
    assert refused(capsys, TINY, "data.tasks=[TSG,XYZ]") == (
        "error: override 'data.tasks=[TSG,XYZ]': key 'data.tasks[1]': 'XYZ' is not one of: TSG, LTR, TAD, GTO, MTR")
    assert "key 'stages[3].trainer.precision': 16 is not one of: 32-true, 64-true, 16-mixed, bf16-mixed" in refused(
        capsys, TINY, "stages.grpo.trainer.precision=16")


def _literal_fields(schema: type, key: str):
    """(dotted override key, shown key, allowed values) of every Literal field reachable from ``schema``."""
    for f in dataclasses.fields(schema):
        tp = typing.get_type_hints(schema)[f.name]
        if choices(tp) is not None:
            yield f"{key}{f.name}", choices(tp)
        elif dataclasses.is_dataclass(tp):
            yield from _literal_fields(tp, f"{key}{f.name}.")


def test_every_literal_field_of_every_config_dataclass_is_checked():
    """Generic: no field is listed by hand; a trainer field is reached through a stage by its name."""
    found = list(_literal_fields(RecipeConfig, "")) + list(_literal_fields(StageConfig, "stages.sft."))
    assert len(found) >= 13  # logger 2, data 2 (and tasks, a list of them), model 7, trainer 2
    for key, allowed in found:
        shown = key.replace("stages.sft.", "stages[2].")
        with pytest.raises(ConfigError) as exc:
            load_recipe(TINY, [f"{key}=bogus"])
        assert str(exc.value) == f"override '{key}=bogus': key '{shown}': 'bogus' is not one of: {', '.join(allowed)}"


@dataclass
class _RenamedGRPOOptions:
    """A GRPO ``Options`` as the renamed schemas will be: ``lr`` and ``batch_size``, ``loss_type`` a Literal."""

    lr: float = 1e-5
    """AdamW learning rate."""
    batch_size: int = 4
    """Prompts per step."""
    max_grad_norm: float = 1.0
    """Clipping norm."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """Loss aggregation."""
    scale_rewards: Optional[Literal["group", "batch", "none"]] = "group"
    """Advantage scaling."""
    rewards: List[Literal["must_reward", "trace_step_reward"]] = field(default_factory=lambda: ["must_reward"])
    """Reward functions."""


TWO_STAGES = """
    name: two
    logger: {kind: none}
    stages:
      - name: sft
        kind: sft
        trainer: {max_steps: 2}
      - name: rl
        kind: grpo
        init_from: sft
        options:
          loss_type: dapo
        trainer: {max_steps: 2}
    """


def test_stage_options_literal_checked_from_stage_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(config.STAGE_OPTIONS, "grpo", _RenamedGRPOOptions)
    path = write(tmp_path, TWO_STAGES)
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert refused(capsys, path, "stages.rl.options.loss_type=ppo") == (
        "error: override 'stages.rl.options.loss_type=ppo': key 'stages[1].options.loss_type': 'ppo' is not one of: "
        "grpo, dr_grpo, dapo, bnpo")
    assert refused(capsys, path, "stages.rl.options.rewards=[must_reward,nope]").endswith(
        "key 'stages[1].options.rewards[1]': 'nope' is not one of: must_reward, trace_step_reward")
    assert refused(capsys, path, "stages.rl.options.scale_rewards=std").endswith(
        "'std' is not one of: group, batch, none")
    assert main(["validate", str(path), "stages.rl.options.scale_rewards=null"]) == 0  # Optional: None allowed
    capsys.readouterr()
    bad = write(tmp_path, TWO_STAGES.replace("loss_type: dapo", "loss_type: ppo"))
    assert refused(capsys, bad) == (
        f"error: {bad}: key 'stages[1].options.loss_type': 'ppo' is not one of: grpo, dr_grpo, dapo, bnpo (line 11)")


class LiteralStage:
    """A dotted stage kind (``tests.test_validate_refuses:LiteralStage``) whose ``Options`` has a Literal field."""

    @dataclass
    class Options:
        """Its options."""

        mode: Literal["fast", "exact"] = "fast"
        """How."""

    @classmethod
    def from_context(cls, ctx):  # pragma: no cover - never run: validate only
        raise AssertionError

    def save_model(self, path):  # pragma: no cover
        raise AssertionError


def test_dotted_kind_options_literal_checked(tmp_path, capsys):
    path = write(tmp_path, """
        name: dotted
        stages:
          - name: mine
            kind: tests.test_validate_refuses:LiteralStage
            options: {mode: slow}
        """)
    assert refused(capsys, path).startswith(
        f"error: {path}: key 'stages[0].options.mode': 'slow' is not one of: fast, exact (line 5)")


def test_real_stage_option_checked_by_type_today(capsys):
    """A real GRPO option: a wrong type names the key (the Literal values come with the renamed schemas)."""
    assert refused(capsys, TINY, "stages.grpo.options.num_generations=lots").startswith(
        "error: override 'stages.grpo.options.num_generations=lots': key 'stages[3].options.num_generations': ")


# ----------------------------------------------------------------------------------------- strategies


def test_unknown_strategy_refused_with_the_known_ones(capsys):
    err = refused(capsys, TINY, "stages.sft.trainer.strategy=ddp2")
    assert err.startswith("error: override 'stages.sft.trainer.strategy=ddp2': key 'stages[2].trainer.strategy': "
                          "'ddp2' is not one of: auto, ddp, ddp_spawn, ddp_fork, ddp_notebook, fsdp, fsdp_cpu_offload, "
                          "fsdp2, model_parallel, deepspeed, deepspeed_stage_1, ")
    assert err.endswith("(each ddp one also with _find_unused_parameters_true or _false); did you mean 'ddp'?")


@pytest.mark.parametrize("name", ["ddp_find_unused_parameters_true", "fsdp2", "deepspeed_stage_3_offload"])
def test_every_table_strategy_validates(name):
    assert load_recipe(TINY, [f"stages.sft.trainer.strategy={name}"]).stages[2].trainer.strategy == name


# ----------------------------------------------------------------------------------------- GRPO's trainer keys


def test_grpo_refuses_gradient_clip_val_naming_max_grad_norm(capsys):
    """must7b clips every other stage's gradients with trainer.gradient_clip_val; GRPO's own option does it."""
    assert refused(capsys, MUST7B, "stages.grpo.trainer.gradient_clip_val=1.0") == (
        "error: override 'stages.grpo.trainer.gradient_clip_val=1.0': key 'stages[3].trainer.gradient_clip_val': 1.0: "
        "a grpo stage optimises manually, and Lightning refuses trainer.gradient_clip_val then; leave it unset and set "
        "stages.grpo.options.max_grad_norm instead")
    assert load_recipe(MUST7B, ["stages.grpo.trainer.gradient_clip_val=0"]).stages[3].trainer.gradient_clip_val == 0
    assert load_recipe(MUST7B).stages[2].trainer.gradient_clip_val == 1.0  # the other stages keep theirs


def test_grpo_refuses_gradient_accumulation_in_the_file(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, TWO_STAGES.replace("dapo\n        trainer: {max_steps: 2}",
                                              "dapo\n        trainer: {max_steps: 2, accumulate_grad_batches: 4}"))
    err = refused(capsys, path)
    assert err == (f"error: {path}: key 'stages[1].trainer.accumulate_grad_batches': 4: a grpo stage optimises manually, "
                   "and Lightning refuses trainer.accumulate_grad_batches then; leave it at 1 and set "
                   f"stages.rl.options.batch_size instead (line 12)")


@pytest.mark.parametrize("key,value", [("gradient_clip_val", 1.0), ("accumulate_grad_batches", 2)])
def test_lightning_refuses_the_keys_we_refuse_under_manual_optimisation(tmp_path, key, value):
    """What REFUSED_TRAINER_KEYS['grpo'] holds is what Lightning refuses (and only when the stage starts)."""
    import lightning as L
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    assert set(config.REFUSED_TRAINER_KEYS["grpo"]) == {"gradient_clip_val", "accumulate_grad_batches"}

    class Manual(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(4, 1))

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **{key: value})
    with pytest.raises(MisconfigurationException, match="not supported for manual optimization"):
        trainer.fit(Manual())


# ----------------------------------------------------------------------------------------- where an error is


THREE_STAGES = f"""
    name: three
    seed: 1
    stages:
      - name: a
        kind: {"tests._stages:Producer"}
        trainer: {{max_steps: 2, precision: 32-true}}
      - name: b
        kind: {"tests._stages:Producer"}
        init_from: a
        trainer: {{max_steps: 2, precision: 32-true}}
      - name: c
        kind: {"tests._stages:Producer"}
        init_from: b
        trainer: {{max_steps: 2, precision: 32-true}}
    """


def test_override_error_names_the_override_not_the_file(tmp_path, capsys):
    path = write(tmp_path, THREE_STAGES)
    err = refused(capsys, path, "seed=abc")
    assert err == ("error: override 'seed=abc': key 'seed': Value 'abc' of type 'str' could not be converted to Integer")
    assert str(path) not in err
    err = refused(capsys, path, "stages.c.trainer.max_steps=ten")  # inside a stage, named by the stage's name
    assert err.startswith("error: override 'stages.c.trainer.max_steps=ten': key 'stages[2].trainer.max_steps': ")
    err = refused(capsys, TINY, "logger={kind: tensorboard}")  # a whole block set by the override
    assert err == ("error: override 'logger={kind: tensorboard}': key 'logger.kind': 'tensorboard' is not one of: "
                   "wandb, csv, none")


def test_same_error_in_the_file_names_the_file_and_line(tmp_path, capsys):
    path = write(tmp_path, THREE_STAGES.replace("seed: 1", "seed: abc"))
    assert refused(capsys, path) == (f"error: {path}: key 'seed': Value 'abc' of type 'str' could not be converted "
                                     "to Integer (line 2)")
    # An override of another key does not take the blame for the file's error.
    assert refused(capsys, path, "stages.a.trainer.max_steps=3").startswith(f"error: {path}: key 'seed': ")


@pytest.mark.parametrize("old,new,key,line", [
    ("init_from: b\n        trainer: {max_steps: 2,", "init_from: b\n        trainer: {max_stpes: 2,",
     "stages[2].trainer.max_stpes", 14),
    ("init_from: b\n        trainer: {max_steps: 2, precision: 32-true}",
     "init_from: b\n        trainer: {max_steps: 2, precision: 16}", "stages[2].trainer.precision", 14),
    ("init_from: a\n        trainer: {max_steps: 2,", "init_from: a\n        trainer: {max_steps: many,",
     "stages[1].trainer.max_steps", 10),
])
def test_error_in_a_later_stage_points_at_that_stages_line(tmp_path, capsys, old, new, key, line):
    """The first stage has the same keys (line 6): the error must name the line of the stage at fault."""
    assert THREE_STAGES.count(old) == 1
    path = write(tmp_path, THREE_STAGES.replace(old, new))
    err = refused(capsys, path)
    assert err.startswith(f"error: {path}: key '{key}': ") and err.endswith(f"(line {line})")
    assert path.read_text().splitlines()[line - 1].strip().startswith("trainer:")


# ----------------------------------------------------------------------------------------- renamed options


def test_renamed_option_names_old_and_new_by_full_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(config.STAGE_OPTIONS, "grpo", _RenamedGRPOOptions)  # lacks learning_rate and prompts_per_step
    path = write(tmp_path, TWO_STAGES.replace("loss_type: dapo", "learning_rate: 1.0e-6"))
    assert refused(capsys, path) == (f"error: {path}: key 'stages[1].options.learning_rate': options.learning_rate "
                                     "was renamed to options.lr (line 11)")
    fixed = write(tmp_path, TWO_STAGES.replace("loss_type: dapo", "lr: 1.0e-6"))
    assert load_recipe(fixed).stages[1].options == {"lr": 1.0e-6}
    assert refused(capsys, fixed, "stages.rl.options.prompts_per_step=2") == (
        "error: override 'stages.rl.options.prompts_per_step=2': key 'stages[1].options.prompts_per_step': "
        "options.prompts_per_step was renamed to options.batch_size")


def test_renamed_options_only_where_the_schema_has_the_new_name(tmp_path, capsys, monkeypatch):
    """The real schemas refuse the old names; an old name whose new name a schema lacks is an unknown key."""
    err = refused(capsys, TINY, "stages.grpo.options.learning_rate=1e-4")
    assert err.endswith("key 'stages[3].options.learning_rate': options.learning_rate was renamed to options.lr")
    monkeypatch.setitem(config.STAGE_OPTIONS, "grpo", _RenamedGRPOOptions)
    err = refused(capsys, write(tmp_path, TWO_STAGES), "stages.rl.options.eval_untrained=true")
    assert "key 'stages[1].options.eval_untrained': unknown key" in err
    assert set(config.RENAMED_OPTIONS) == {"learning_rate", "trainable", "prompts_per_step", "questions_per_track",
                                           "eval_untrained", "val_max_new_tokens", "dynamic_sampling", "rewards"}


def test_run_refuses_before_any_work(tmp_path, capsys):
    """``must run`` loads the recipe the same way: refused before a folder or a stage exists."""
    out = tmp_path / "out"
    assert main(["run", TINY, f"output_dir={out}", "stages.grpo.options.num_iterations=1",
                 "stages.grpo.trainer.gradient_clip_val=1.0"]) == 2
    assert "key 'stages[3].trainer.gradient_clip_val'" in capsys.readouterr().err
    assert not out.exists()


def test_literal_value_given_by_an_interpolation_is_checked_resolved(tmp_path, capsys):
    text = THREE_STAGES.replace("name: three", "name: tensorboard").replace("seed: 1", "logger: {kind: '${name}'}")
    path = write(tmp_path, text)
    err = refused(capsys, path)
    # omegaconf 2.4 refuses it while resolving (its words), earlier ones pass it on to must's check: both name all
    assert err.startswith(f"error: {path}: key 'logger.kind': ") and err.endswith("(line 2)")
    assert all(word in err for word in ("'tensorboard'", "wandb", "csv", "none"))
