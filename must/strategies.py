"""What each ``trainer.strategy`` a recipe may name is: one table, read by the config check, the runner and ``must plan``.

Torch-free, so ``must validate`` checks a strategy name without importing Lightning. The names are
Lightning's registered ones (``lightning.pytorch.strategies.StrategyRegistry``) that run a ``must`` stage,
plus ``fsdp2``, which the runner builds itself (FSDP2 ``fully_shard`` through ``ModelParallelStrategy``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    """How one strategy places a stage's weights, gradients and optimizer state over the processes."""

    family: str
    """``auto`` (one device, or DDP over several: what Lightning picks), ``ddp``, ``fsdp`` (FSDP1), ``fsdp2``
    or ``deepspeed``."""
    shards: frozenset[str] = frozenset()
    """What is split over the processes instead of copied: a subset of ``weights``, ``grads``, ``optim``."""
    zero_stage: int | None = None
    """DeepSpeed ZeRO stage (1 shards the optimizer state, 2 also the gradients, 3 also the weights)."""
    gpu_only: bool = False
    """Lightning refuses it with ``accelerator: cpu``."""


_ALL = frozenset({"weights", "grads", "optim"})
_ZERO = {1: frozenset({"optim"}), 2: frozenset({"optim", "grads"}), 3: _ALL}


def _ddp(*names: str) -> dict[str, Strategy]:
    return {name: Strategy("ddp") for name in names}


def _zero(stage: int) -> Strategy:
    return Strategy("deepspeed", _ZERO[stage], zero_stage=stage, gpu_only=True)


#: Strategy name -> what it is. ``deepspeed`` alone is ZeRO stage 2 (Lightning's ``DeepSpeedStrategy`` default).
STRATEGIES: dict[str, Strategy] = {
    "auto": Strategy("auto"),
    **_ddp(*(f"ddp{start}{unused}" for start in ("", "_spawn", "_fork", "_notebook")
             for unused in ("", "_find_unused_parameters_false", "_find_unused_parameters_true"))),
    "fsdp": Strategy("fsdp", _ALL, gpu_only=True),
    "fsdp_cpu_offload": Strategy("fsdp", _ALL, gpu_only=True),
    "fsdp2": Strategy("fsdp2", _ALL),
    "model_parallel": Strategy("fsdp2", _ALL),
    "deepspeed": _zero(2),
    "deepspeed_stage_1": _zero(1),
    "deepspeed_stage_2": _zero(2),
    "deepspeed_stage_2_offload": _zero(2),
    "deepspeed_stage_3": _zero(3),
    "deepspeed_stage_3_offload": _zero(3),
    "deepspeed_stage_3_offload_nvme": _zero(3),
}


def strategy(name: str) -> Strategy:
    """The table's entry for ``name``; a ``KeyError`` naming the known ones (recipes are checked at load)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r} (one of {', '.join(STRATEGIES)})") from None


def is_ddp(name: str) -> bool:
    """Whether several processes each hold a full copy and all-reduce gradients (``auto`` does on several devices)."""
    return strategy(name).family in ("auto", "ddp")


def sharded_weights(name: str) -> bool:
    """Whether each rank keeps only a shard of the weights after fit (gathered before saving)."""
    return "weights" in strategy(name).shards


def plain_checkpoints(name: str) -> bool:
    """Whether Lightning writes one checkpoint file (ours to make atomic) rather than a sharded folder."""
    return strategy(name).family in ("auto", "ddp")


def is_fsdp2(name: str) -> bool:
    """Whether the runner builds the strategy itself (FSDP2 through ``ModelParallelStrategy``)."""
    return strategy(name).family == "fsdp2"
