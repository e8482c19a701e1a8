"""``must validate`` (and ``must run``, before any work) refuses every value a stage would fail on later, by key."""

from __future__ import annotations

import pytest

from must import strategies


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
