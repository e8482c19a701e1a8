"""``must plan RECIPE``: a 7B run planned on paper before it is launched.

For each stage: trainable and frozen parameters (the stage's own freezing policy applied to a
weightless copy of the model on the ``meta`` device, so a 7B model costs no memory here), audio tokens
per sample (from track durations and the sampling budget), and an estimate of memory per GPU under
the stage's strategy and precision.

The memory model is deliberately simple (weights + gradients + AdamW state, sharded as the strategy
shards them, plus activations from the Korthikanti et al. per-layer estimate); it is checked against
measured peaks in ``benchmarks/results/plan_vs_measured.md``.
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from must.config import RecipeConfig, StageConfig, load_recipe, stage_class, stage_options
from must.errors import MustError
from must.models.config import ModelConfig

GIB = 1024**3
# Text tokens around the music tokens: chat template + question (+ answer), measured on the synthetic
# questions with the tiny tokenizer (~45); we round up so the estimate errs on the safe side.
TEXT_TOKENS_PER_QUESTION = 64
# Host LALM towers (Qwen2-Audio, Qwen2.5-Omni) emit 25 audio tokens per second.
HOST_TOKENS_PER_SECOND = 25.0


@dataclass
class StagePlan:
    """What one stage will hold in memory, per GPU."""

    name: str
    """Stage name."""
    kind: str
    """Stage kind."""
    trainable: int
    """Trainable parameters."""
    frozen: int
    """Frozen parameters."""
    audio_tokens: int
    """MusT audio tokens per sample (longest track), plus the host's own tokens when there is a host."""
    sequence: int
    """Tokens in one training sequence (audio + text)."""
    world_size: int
    """Processes the stage runs on (devices x nodes)."""
    memory_gib: dict
    """Estimated GiB per GPU: weights, grads, optimizer, activations, total."""


def plan_recipe(recipe: RecipeConfig) -> list[StagePlan]:
    """A :class:`StagePlan` for every stage of ``recipe``."""
    model = skeleton(recipe.model)
    return [plan_stage(recipe, stage, model) for stage in recipe.stages]


def plan_stage(recipe: RecipeConfig, stage: StageConfig, model: torch.nn.Module) -> StagePlan:
    """Apply the stage's trainable selection to ``model`` and estimate its memory."""
    cls = stage_class(stage.kind, f"stage '{stage.name}' kind")
    options = stage_options(cls, stage.options, f"stage '{stage.name}' key 'options")
    select = getattr(importlib.import_module(cls.__module__), "select_trainable", None)
    if select is not None:
        select(model, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    audio = audio_tokens(recipe.model, recipe.data.max_seconds)
    questions = max(1, int(getattr(options, "questions_per_clip", 1) or 1))
    # Stage 1 never runs the LLM: no LLM activations.
    sequence = 0 if stage.kind == "encoder_adapt" else audio + questions * TEXT_TOKENS_PER_QUESTION
    batch = int(getattr(options, "batch_size", 1) or 1) * int(getattr(options, "num_generations", 1) or 1)
    world = _world_size(stage)
    memory = estimate_memory(model, trainable, frozen, stage.trainer.strategy, stage.trainer.precision,
                             world, batch, sequence)
    return StagePlan(stage.name, stage.kind, trainable, frozen, audio, sequence, world, memory)


def audio_tokens(cfg: ModelConfig, seconds: float) -> int:
    """Audio tokens for a track of ``seconds``: the sampling budget, plus the host tower's tokens."""
    s = cfg.sampling
    n = min(s.max_tokens, max(s.min_tokens, int(math.ceil(s.tokens_per_second * seconds))))
    if cfg.host.kind != "none" and cfg.host.use_audio_tower:
        n += int(math.ceil(HOST_TOKENS_PER_SECOND * seconds))
    return n


def estimate_memory(model: torch.nn.Module, trainable: int, frozen: int, strategy: str, precision: str,
                    world: int, batch: int, sequence: int) -> dict:
    """GiB per GPU. Weights at the precision's storage width (mixed precision keeps fp32 weights);
    gradients and the two AdamW moments for trainable parameters only; FSDP / ZeRO-3 shard all three,
    ZeRO-2 gradients and optimizer state, ZeRO-1 optimizer state; activations per layer
    ``s*b*h*(34 + 5*a*s/h)`` bytes at 16-bit, doubled at 32-bit (no activation checkpointing)."""
    width = 2 if precision.startswith(("bf16-true", "16-true")) else 4
    weights = (trainable + frozen) * width
    grads = trainable * width
    optim = trainable * 8 + (trainable * 4 if width == 2 else 0)  # moments (+ fp32 master copy)
    shard = _sharding(strategy)
    weights /= world if "weights" in shard else 1
    grads /= world if "grads" in shard else 1
    optim /= world if "optim" in shard else 1
    activations = _activation_bytes(model, batch, sequence) * (1 if "16" in precision else 2)
    parts = {"weights": weights, "grads": grads, "optimizer": optim, "activations": activations}
    out = {k: round(v / GIB, 3) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / GIB, 3)
    return out


def _sharding(strategy: str) -> set[str]:
    if "fsdp" in strategy or "stage_3" in strategy or "model_parallel" in strategy:
        return {"weights", "grads", "optim"}
    if "stage_2" in strategy:
        return {"grads", "optim"}
    if "stage_1" in strategy:
        return {"optim"}
    return set()


def _activation_bytes(model: torch.nn.Module, batch: int, sequence: int) -> float:
    cfg = getattr(model.llm, "config", None)
    text = getattr(cfg, "text_config", None) or cfg
    h = getattr(text, "hidden_size", 128)
    layers = getattr(text, "num_hidden_layers", 1)
    heads = getattr(text, "num_attention_heads", 1)
    per_layer = sequence * batch * h * (34 + 5 * heads * sequence / h)
    return layers * per_layer


def _world_size(stage: StageConfig) -> int:
    devices = stage.trainer.devices
    if isinstance(devices, int):
        n = devices
    elif isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        n = int(devices)
    else:
        n = 1  # "auto": one device on a plan; say so in the table
    return max(1, n) * max(1, stage.trainer.num_nodes)


# ----------------------------------------------------------------------------------------- skeleton


def skeleton(cfg: ModelConfig) -> torch.nn.Module:
    """The recipe's model with every parameter on the ``meta`` device: shapes and names, no memory.

    Local folders contribute only their ``config.json`` and tokenizer; no weights are read.
    """
    from must.models.encoder import MusTEncoder, wrap_hf_backbone
    from must.models.lalm import MusicLALM
    from must.models.llm import build_llm, check_model_folder, host_class, smollm2_folder

    with torch.device("meta"):
        backbone = None
        if Path(cfg.encoder.backbone).is_dir():
            from transformers import AutoConfig, AutoModel

            remote = cfg.encoder.trust_remote_code
            hf = AutoConfig.from_pretrained(cfg.encoder.backbone, trust_remote_code=remote)
            backbone = wrap_hf_backbone(AutoModel.from_config(hf, trust_remote_code=remote), cfg.encoder)
        encoder = MusTEncoder(cfg.encoder, backbone=backbone)
        if cfg.llm.source == "tiny":
            llm, tok = build_llm(cfg.llm, cfg.host)
        else:
            from transformers import AutoConfig, AutoTokenizer

            folder = smollm2_folder(cfg.llm.cache_dir) if cfg.llm.source == "smollm2-135m" else Path(cfg.llm.source)
            check_model_folder(Path(folder), "LLM")
            remote = cfg.llm.trust_remote_code
            llm = host_class(cfg.host.kind)._from_config(AutoConfig.from_pretrained(str(folder), trust_remote_code=remote))
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=remote)
        model = MusicLALM(cfg, encoder, llm, tok)
        model._add_adapters()
    return model


# ----------------------------------------------------------------------------------------- CLI


def format_plan(plans: list[StagePlan]) -> str:
    """The plan as a text table."""
    head = (f"{'stage':<12} {'kind':<14} {'trainable':>12} {'frozen':>14} {'audio tok':>9} {'seq':>6} "
            f"{'gpus':>4} {'weights':>8} {'grads':>7} {'optim':>7} {'activ':>7} {'GiB/GPU':>8}")
    lines = [head, "-" * len(head)]
    for p in plans:
        m = p.memory_gib
        lines.append(
            f"{p.name:<12} {p.kind[:14]:<14} {p.trainable:>12,} {p.frozen:>14,} {p.audio_tokens:>9} {p.sequence:>6} "
            f"{p.world_size:>4} {m['weights']:>8.2f} {m['grads']:>7.2f} {m['optimizer']:>7.2f} "
            f"{m['activations']:>7.2f} {m['total']:>8.2f}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")


def handler(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    try:
        plans = plan_recipe(recipe)
    except (OSError, ValueError) as exc:
        raise MustError(f"{args.recipe}: cannot build the model skeleton: {exc}") from None
    print(f"# plan for {args.recipe} (longest track {recipe.data.max_seconds:g} s; estimates, not measurements)")
    print(format_plan(plans))
    return 0
