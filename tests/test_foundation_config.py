"""Recipe validation: every user mistake stops before work, names file and key, exits 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from must.cli import main
from must.config import load_recipe
from must.errors import ConfigError

TOY = "tests._stages:Producer"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def base(extra_stage: str = "", stage_b_init: str = "a") -> str:
    return f"""
    name: toy
    stages:
      - name: a
        kind: {TOY}
        trainer: {{max_steps: 2}}
      - name: b
        kind: {TOY}
        init_from: {stage_b_init}
    {extra_stage}
    """


def validate_error(capsys, path: Path, *overrides: str) -> str:
    assert main(["validate", str(path), *overrides]) == 2
    return capsys.readouterr().err


def test_misspelled_trainer_key_names_file_key_and_suggestion(tmp_path, capsys):
    path = write(tmp_path, base().replace("{max_steps: 2}", "{max_stpes: 2}"))
    err = validate_error(capsys, path)
    assert str(path) in err
    assert "stages[0].trainer.max_stpes" in err
    assert "did you mean 'max_steps'" in err
    assert "Traceback" not in err


def test_misspelled_top_level_key(tmp_path, capsys):
    path = write(tmp_path, textwrap.dedent(base()) + "logerr: {kind: csv}\n")
    err = validate_error(capsys, path)
    assert "key 'logerr'" in err and "did you mean 'logger'" in err


def test_wrong_type_names_key(tmp_path, capsys):
    path = write(tmp_path, base().replace("{max_steps: 2}", "{max_steps: lots}"))
    err = validate_error(capsys, path)
    assert "stages[0].trainer.max_steps" in err


def test_missing_required_value(tmp_path, capsys):
    path = write(tmp_path, base().replace("name: toy", "seed: 1"))
    err = validate_error(capsys, path)
    assert "missing required value" in err and "name" in err


def test_missing_keys_are_the_keys_to_set_not_those_that_interpolate_them():
    from omegaconf import OmegaConf

    from must.config import missing_keys

    cfg = OmegaConf.create({"name": "???", "output_dir": "runs/${name}", "stages": [{"a": "???"}, {"b": 1}],
                            "m": {"x": {"y": "???"}, "z": 2}})
    assert missing_keys(cfg) == ["m.x.y", "name", "stages[0].a"]  # the same on omegaconf 2.2-2.4
    assert missing_keys(OmegaConf.create({"name": "toy", "output_dir": "runs/${name}"})) == []


def test_init_from_must_name_an_earlier_stage(tmp_path, capsys):
    err = validate_error(capsys, write(tmp_path, base(stage_b_init="nowhere")))
    assert "stages[1].init_from" in err and "'nowhere' names no earlier stage" in err


def test_init_from_a_later_stage_is_refused(tmp_path, capsys):
    text = base(stage_b_init="a").replace("name: a\n        kind", "name: a\n        init_from: b\n        kind")
    err = validate_error(capsys, write(tmp_path, text))
    assert "stages[0].init_from" in err and "runs after" in err


def test_duplicate_stage_name(tmp_path, capsys):
    err = validate_error(capsys, write(tmp_path, textwrap.dedent(base()) + f"  - name: a\n    kind: {TOY}\n"))
    assert "duplicate stage name 'a'" in err


def test_unknown_stage_kind_suggests(tmp_path, capsys):
    err = validate_error(capsys, write(tmp_path, base().replace(f"kind: {TOY}\n        trainer", "kind: sfft\n        trainer")))
    assert "stages[0].kind" in err and "did you mean 'sft'" in err


def test_stage_options_are_typed(tmp_path, capsys):
    path = write(tmp_path, base().replace("trainer: {max_steps: 2}", "options: {lrr: 0.5}"))
    err = validate_error(capsys, path)
    assert "stages[0].options.lrr" in err and "did you mean 'lr'" in err


def test_builtin_stage_options_are_typed(capsys):
    tiny = str(Path(__file__).resolve().parents[1] / "recipes/tiny.yaml")
    err = validate_error(capsys, tiny, "stages.sft.options.questions_per_clipp=3")
    assert "key 'stages[2].options.questions_per_clipp': unknown key; did you mean 'questions_per_clip'?" in err
    err = validate_error(capsys, tiny, "stages.grpo.options.num_generations=lots")
    assert "key 'stages[3].options.num_generations'" in err and "'lots'" in err


def test_validate_checks_the_options_each_stage_class_runs_with():
    from must.config import STAGE_KINDS, STAGE_OPTIONS, stage_class

    assert {kind: stage_class(kind).Options for kind in STAGE_KINDS} == STAGE_OPTIONS


def test_overrides_by_stage_name_and_index(tmp_path):
    path = write(tmp_path, base())
    recipe = load_recipe(path, ["seed=7", "stages.b.trainer.max_steps=9", "stages.0.options.lr=0.5"])
    assert recipe.seed == 7
    assert recipe.stages[1].trainer.max_steps == 9
    assert recipe.stages[0].options == {"lr": 0.5}
    assert recipe.output_dir == "runs/toy"  # ${name} resolved


def test_override_of_unknown_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_stepz"):
        load_recipe(write(tmp_path, base()), ["stages.a.trainer.max_stepz=3"])


def test_validate_prints_resolved_config(tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, base())), f"output_dir={tmp_path / 'x'}"]) == 0
    out = capsys.readouterr().out
    assert f"output_dir: {tmp_path / 'x'}" in out and "valid (2 stages: a, b)" in out
