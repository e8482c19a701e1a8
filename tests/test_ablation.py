"""benchmarks/ablation.py: each variant changes exactly what its name says, and every evaluated stage is reported."""

import importlib.util
import json
from pathlib import Path

from must.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

BASE = load_recipe(ROOT / "recipes" / "tiny.yaml")


def _steps(recipe):
    return {s.name: s.trainer.max_steps for s in recipe.stages}


def test_variants_drop_stages_and_change_the_model_at_the_same_budget(tmp_path):
    v = {name: ablation.variant_recipe(BASE, name, tmp_path, 1.0) for name in ablation.VARIANTS}
    assert [s.kind for s in v["sft_only"].stages] == ["sft"]
    assert v["sft_only"].stages[0].init_from is None  # from the model as built, not a missing stage
    assert [s.kind for s in v["captions_sft"].stages] == ["lm_adapt", "sft"]
    assert v["captions_sft"].stages[0].init_from is None
    assert [s.kind for s in v["all"].stages] == [s.kind for s in BASE.stages]
    assert v["uniform"].model.sampling.mode == "uniform" != BASE.model.sampling.mode
    assert v["no_source"].model.encoder.num_sources == 0 < BASE.model.encoder.num_sources
    assert (BASE.model.answer_format, BASE.model.time_embedding.kind) == ("grounded", "tokens")
    assert (v["plain"].model.answer_format, v["plain"].model.time_embedding.kind) == ("plain", "tokens")
    assert (v["digits"].model.answer_format, v["digits"].model.time_embedding.kind) == ("plain", "digits")
    assert not v["digits"].model.time_embedding.pointer and not v["no_pointer"].model.time_embedding.pointer
    assert BASE.model.time_embedding.pointer and v["all"].model.time_embedding.pointer
    grpo = {name: next(s for s in r.stages if s.kind == "grpo").options for name, r in v.items() if name != "sft_only"
            and name != "captions_sft"}
    assert list(grpo["plain"]["reward_funcs"]) == ["must_reward"] and "trace_step_reward" in grpo["all"]["reward_funcs"]
    base_steps = _steps(BASE)
    for name, recipe in v.items():
        assert recipe.seed == BASE.seed
        assert recipe.output_dir == str(tmp_path / name)
        assert all(base_steps[k] == n for k, n in _steps(recipe).items())
    half = ablation.variant_recipe(BASE, "all", tmp_path, 0.5)
    assert _steps(half) == {k: max(1, round(n * 0.5)) for k, n in base_steps.items()}
    assert BASE.stages[0].options.get("eval_init") is True  # the base recipe is not modified


def test_every_variants_stage_one_builds(tmp_path):
    """A variant that drops the source head must drop what needs it (tiny.yaml's source crops)."""
    from must.config import stage_options
    from must.models.lalm import MusicLALM
    from must.stages.encoder_adapt import EncoderAdaptation

    assert BASE.stages[0].options["source_crops"] > 0
    for name in ("all", "no_source"):
        recipe = ablation.variant_recipe(BASE, name, tmp_path, 1.0)
        spec = next(s for s in recipe.stages if s.kind == "encoder_adapt")
        stage = EncoderAdaptation(MusicLALM.from_config(recipe.model), recipe.data,
                                  stage_options(EncoderAdaptation, spec.options, f"{name} encoder options"))
        assert stage.options.source_crops == (0 if name == "no_source" else BASE.stages[0].options["source_crops"])


def test_every_evaluated_stage_is_reported_in_recipe_order(tmp_path):
    recipe = ablation.variant_recipe(BASE, "all", tmp_path, 1.0)
    for stage, overall in (("grpo", 40.0), ("sft", 30.0)):
        d = tmp_path / "all" / stage
        (d / "eval").mkdir(parents=True)
        (d / "eval" / "scores.json").write_text(json.dumps({"overall": overall}))
    (tmp_path / "all" / "encoder").mkdir()  # a stage that evaluated nothing is left out
    found = ablation.stage_scores(recipe)
    assert [(name, s["overall"]) for name, s in found] == [("sft", 30.0), ("grpo", 40.0)]
