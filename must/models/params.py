"""Freezing and learning rates by parameter-name patterns (``fnmatch`` globs, e.g. ``encoder.backbone.*``,
``*lora_*``, ``projector.*``), for the stages to apply from the recipe."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from must.errors import ConfigError


def matches(name: str, patterns) -> bool:
    """True when ``name`` matches any glob in ``patterns``."""
    return any(fnmatchcase(name, p) for p in patterns)


def _check_used(module: nn.Module, patterns) -> None:
    names = [n for n, _ in module.named_parameters()]
    for p in patterns:
        if not any(fnmatchcase(n, p) for n in names):
            raise ConfigError(
                f"parameter pattern {p!r} matches no parameter of the model "
                f"(names look like {names[0]!r}, {names[-1]!r})"
            )


def freeze(module: nn.Module, patterns) -> int:
    """Stop gradients for parameters matching ``patterns`` (others untouched); returns how many."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    _check_used(module, patterns)
    n = 0
    for name, p in module.named_parameters():
        if matches(name, patterns):
            p.requires_grad_(False)
            n += 1
    return n


def trainable(module: nn.Module, patterns) -> int:
    """Train exactly the parameters matching ``patterns``, freeze all others; returns how many train."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    _check_used(module, patterns)
    n = 0
    for name, p in module.named_parameters():
        p.requires_grad_(matches(name, patterns))
        n += p.requires_grad
    return n


def param_groups(
    module: nn.Module, lrs: dict[str, float], default_lr: float, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters: the first matching pattern of ``lrs``
    (in order) sets the learning rate, ``default_lr`` for the rest. Empty groups are dropped."""
    _check_used(module, list(lrs))
    groups = {p: {"name": p, "params": [], "lr": lr, "weight_decay": weight_decay} for p, lr in lrs.items()}
    rest = {"name": "default", "params": [], "lr": default_lr, "weight_decay": weight_decay}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        hit = next((pat for pat in lrs if fnmatchcase(name, pat)), None)
        (groups[hit] if hit else rest)["params"].append(p)
    return [g for g in [*groups.values(), rest] if g["params"]]
