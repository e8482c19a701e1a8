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
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from must import strategies
from must.config import RecipeConfig, StageConfig, load_recipe, stage_class, stage_options
from must.errors import MustError
from must.models.config import ModelConfig

GIB = 1024**3
# Text tokens around the music tokens: chat template + question (+ answer), measured on the synthetic
# questions with the tiny tokenizer (~45); we round up so the estimate errs on the safe side.
TEXT_TOKENS_PER_QUESTION = 64
# Measured / Korthikanti activations of Hugging Face models (fp32, CPU) in benchmarks/results/plan_vs_measured.md:
# 2.4x (LoRA SFT), 2.8x (GRPO) on SmolLM2: HF's RMSNorm keeps fp32 intermediates, rotary embeddings keep
# rotated copies, the losses keep several vocabulary-wide copies. Applied so the plan errs on the safe side.
HF_ACTIVATION_FACTOR = 2.5
# Timestamped captions (stage 2): up to ~600 tiny-tokenizer tokens for a 60 s synthetic track.
CAPTION_TOKENS_PER_SECOND = 10.0
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
    apply_freezing(cls, model, recipe, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    audio = audio_tokens(recipe.model, recipe.data.max_seconds)
    questions = max(1, int(getattr(options, "questions_per_clip", 1) or 1))
    answer = int(getattr(options, "max_completion_length", 0) or 0)
    # Stage 1 never runs the LLM: no LLM activations (its encoder activations are counted instead).
    encoder_only = stage.kind == "encoder_adapt"
    # Question after the music: a clip's questions share its audio in one packed sequence; question
    # first: the audio tokens depend on the question, so each question carries its own copy.
    shared = recipe.model.question_position == "after"
    per_question = TEXT_TOKENS_PER_QUESTION + answer + (0 if shared else audio)
    sequence = 0 if encoder_only else (audio if shared else 0) + questions * per_question
    if stage.kind == "lm_adapt":  # the answer is the whole timestamped caption, ~10 tokens per second of music
        cap = int(getattr(options, "max_caption_tokens", 1024) or 1024)
        sequence += min(cap, math.ceil(CAPTION_TOKENS_PER_SECOND * recipe.data.max_seconds))
    batch = int(getattr(options, "batch_size", 1) or 1)
    logit_tokens = None
    if stage.kind == "grpo":
        # GRPO runs each prompt once and its G completions after it (shared prefix): count tokens, not rows.
        prompts, groups = batch * questions, int(getattr(options, "num_generations", 1) or 1)
        logit_tokens = prompts * groups * answer
        sequence, batch = prompts * (audio + TEXT_TOKENS_PER_QUESTION) + logit_tokens, 1
    world = _world_size(stage)
    memory = estimate_memory(model, stage.trainer.strategy, stage.trainer.precision, world, batch, sequence,
                             encoder_seconds=recipe.data.max_seconds if encoder_only else 0.0,
                             logit_tokens=logit_tokens, checkpointing=stage.trainer.activation_checkpointing)
    return StagePlan(stage.name, stage.kind, trainable, frozen, audio, sequence, world, memory)


def apply_freezing(cls: type, model: torch.nn.Module, recipe: RecipeConfig, options) -> None:
    """Set ``requires_grad`` on ``model`` exactly as the stage will: through the stage's own pure
    ``train_globs(model, options)`` (the stage protocol, :mod:`must.stages.protocol`). A user's stage without one
    trains everything."""
    from must.stages import common

    for p in model.parameters():  # each stage starts from the model as built
        p.requires_grad_(True)
    _rebuilt_freezing(model)
    globs = getattr(cls, "train_globs", None)
    if globs is not None:
        common.set_trainable(model, *globs(model, options))


def _rebuilt_freezing(model: torch.nn.Module) -> None:
    """The freezing ``MusicLALM`` applies when built: LoRA-adapted parts train only their adapters, a host
    audio tower is frozen."""
    from must.models.lora import has_lora

    for part in (model.encoder.backbone, model.llm):
        if has_lora(part):
            for name, p in part.named_parameters():
                p.requires_grad_("lora_" in name)
    if model.cfg.host.kind != "none":
        from must.models.host import audio_tower

        audio_tower(model.llm).requires_grad_(False)


def audio_tokens(cfg: ModelConfig, seconds: float) -> int:
    """Audio tokens for a track of ``seconds``: the sampling budget, plus the host tower's tokens."""
    s = cfg.sampling
    n = min(s.max_tokens, max(s.min_tokens, math.ceil(s.tokens_per_second * seconds)))
    if cfg.host.kind != "none" and cfg.host.use_audio_tower:
        n += math.ceil(HOST_TOKENS_PER_SECOND * seconds)
    return n


def estimate_memory(model: torch.nn.Module, strategy: str, precision: str, world: int, batch: int,
                    sequence: int, encoder_seconds: float = 0.0, logit_tokens: int | None = None,
                    checkpointing: bool = False) -> dict:
    """GiB per GPU for one training step.

    - weights: every parameter at its own dtype (``*-true`` precisions store all at 16 bits);
    - grads: trainable parameters at their dtype, twice under DDP (its all-reduce buckets copy them);
    - optimizer: AdamW's two moments at the parameter's dtype;
    - FSDP / FSDP2 / ZeRO-3 shard all three over the processes, ZeRO-2 grads and optimizer, ZeRO-1 the optimizer;
    - activations (Korthikanti et al. 2022 times ``HF_ACTIVATION_FACTOR``, measured): ``s*b*h*34`` bytes per layer at
      16 bits (doubled at 32), plus ``5*a*s^2*b`` for the attention scores when the attention is eager
      (SDPA / flash kernels do not store them), plus fp32 logits and their gradient ``2*4*s*b*V``;
      stage 1 counts the encoder's transformer over its windows instead of the LLM. With activation
      checkpointing each layer keeps only its 16-bit input (``2*s*b*h``) and one layer is recomputed at a time.
    """
    true16 = precision.startswith(("bf16-true", "16-true"))
    weights = grads = optim = 0.0
    for p in model.parameters():
        width = 2 if true16 else p.element_size()
        weights += p.numel() * width
        if p.requires_grad:
            grads += p.numel() * width
            optim += 2 * p.numel() * max(width, 4 if not true16 else 2)
    if strategies.is_ddp(strategy) and world > 1:
        grads *= 2
    shard = strategies.strategy(strategy).shards
    weights /= world if "weights" in shard else 1
    grads /= world if "grads" in shard else 1
    optim /= world if "optim" in shard else 1
    act_width = 1 if "16" in precision else 2
    if encoder_seconds:
        activations = _encoder_activation_bytes(model, batch, encoder_seconds, checkpointing) * act_width
    else:
        logits = _logit_bytes(model, 1, batch * sequence if logit_tokens is None else logit_tokens)
        activations = _llm_activation_bytes(model, batch, sequence, checkpointing) * act_width + logits
    parts = {"weights": weights, "grads": grads, "optimizer": optim, "activations": activations}
    out = {k: round(v / GIB, 3) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / GIB, 3)
    out["bytes"] = {k: int(v) for k, v in parts.items()}  # unrounded, for comparisons and tests
    return out


def _text_config(model: torch.nn.Module):
    cfg = getattr(model.llm, "config", None)
    return getattr(cfg, "text_config", None) or cfg


def transformer_activation_bytes(tokens: int, batch: int, hidden: int, layers: int, heads: int,
                                 eager: bool, checkpointing: bool = False) -> float:
    """Bytes a transformer keeps for backward at 16 bits (Korthikanti et al.), ``tokens`` per sequence."""
    per_layer = tokens * batch * hidden * 34 + (5 * heads * tokens * tokens * batch if eager else 0)
    per_layer *= HF_ACTIVATION_FACTOR
    if checkpointing:  # each layer's input is kept exactly; one layer is recomputed at a time
        return float(layers * 2 * tokens * batch * hidden + per_layer)
    return float(layers * per_layer)


def _llm_activation_bytes(model: torch.nn.Module, batch: int, sequence: int, checkpointing: bool = False) -> float:
    text = _text_config(model)
    eager = getattr(text, "_attn_implementation", None) == "eager"
    return transformer_activation_bytes(sequence, batch, getattr(text, "hidden_size", 128),
                                        getattr(text, "num_hidden_layers", 1),
                                        getattr(text, "num_attention_heads", 1), eager, checkpointing)


def _logit_bytes(model: torch.nn.Module, batch: int, sequence: int) -> float:
    vocab = getattr(_text_config(model), "vocab_size", 0) or 0
    return 2.0 * 4 * sequence * batch * vocab * HF_ACTIVATION_FACTOR


def _encoder_activation_bytes(model: torch.nn.Module, batch: int, seconds: float, checkpointing: bool = False) -> float:
    """The encoder's transformer over a track's windows (frames at the backbone's rate, before pooling)."""
    enc_cfg = model.cfg.encoder
    backbone = model.encoder.backbone
    rate = model.encoder.frame_rate * max(1, enc_cfg.frame_pool)
    hf = getattr(getattr(backbone, "model", None), "config", None)
    layers = getattr(hf, "num_hidden_layers", None) or getattr(hf, "encoder_layers", None) or enc_cfg.layers
    heads = getattr(hf, "num_attention_heads", None) or getattr(hf, "encoder_attention_heads", None) or enc_cfg.heads
    window = min(enc_cfg.window_seconds, seconds)
    windows = max(1, math.ceil((seconds - enc_cfg.overlap_seconds) / max(1e-6, window - enc_cfg.overlap_seconds)))
    frames = math.ceil(window * rate)
    eager = getattr(hf, "_attn_implementation", "eager") == "eager" if hf is not None else True
    checkpointing = checkpointing and hf is not None  # the built-in backbone has no checkpointing
    return transformer_activation_bytes(frames, batch * windows, backbone.hidden_size, layers, heads, eager,
                                        checkpointing)


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
    from must.hub import resolve_model_config
    from must.models.encoder import MusTEncoder, wrap_hf_backbone
    from must.models.lalm import MusicLALM
    from must.models.llm import (
        _dtype,
        build_llm,
        check_architecture,
        check_model_folder,
        host_class,
        smollm2_folder,
    )

    cfg = resolve_model_config(cfg)  # Hub ids -> their cached snapshots (only config and tokenizer are read)
    # A preset is converted (real weights, real device) before the meta context: only once per machine.
    folder = smollm2_folder(cfg.llm.cache_dir) if cfg.llm.source == "smollm2-135m" else Path(cfg.llm.source)
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

            check_model_folder(Path(folder), "LLM")
            check_architecture(Path(folder), cfg.host.kind, cfg.llm.trust_remote_code)
            remote = cfg.llm.trust_remote_code
            cls = host_class(cfg.host.kind)
            build = getattr(cls, "from_config", None) or cls._from_config  # Auto class / concrete host class
            hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=remote)
            llm = build(hf_config, dtype=_dtype(cfg.llm.dtype), trust_remote_code=remote) if cls.__name__.startswith(
                "Auto") else build(hf_config, dtype=_dtype(cfg.llm.dtype))
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
