"""The stage protocol: what the runner, ``must plan`` and ``must validate`` need of a stage class, ours and a
user's dotted-path ``package.module:Class`` alike. A ``typing.Protocol`` documents it; :func:`check_stage`
checks a class against it when the recipe loads (before any work), naming what is missing.

A stage is a ``lightning.LightningModule`` class with

- ``from_context(ctx)`` (classmethod): build the stage from a ``must.runner.StageContext`` (recipe, stage
  block, typed ``options``, ``init_dir``, ``stage_dir``, ``seed``);
- ``save_model(path)``: write the model folder the next stage starts from;
- optionally ``Options``: the dataclass its ``options:`` block is checked against (else a plain dict);
- optionally ``train_globs(model, options) -> (train, freeze)`` (a pure static function): the parameter-name
  globs it trains; the stage applies it and ``must plan`` calls the same (without it, everything trains);
- optionally ``evaluate(out_dir, name) -> dict``: score the model into ``out_dir`` and return the summary;
  the runner calls it before training (``options.eval_init``) and after (``options.eval_final``).
"""

from __future__ import annotations

import inspect
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Protocol

from must.errors import ConfigError


class Stage(Protocol):
    """What a stage class offers (see the module docstring)."""

    Options: type

    @classmethod
    def from_context(cls, ctx: Any) -> Stage: ...

    @staticmethod
    def train_globs(model: Any, options: Any) -> tuple[list[str], list[str]]: ...

    def save_model(self, path: Path) -> None: ...

    def evaluate(self, out_dir: Path, name: str) -> dict: ...


#: The members a stage class must have; the others of :class:`Stage` are optional.
REQUIRED = ("from_context", "save_model")


def _arguments(member: Any) -> tuple[str, ...]:
    """The positional parameters of a :class:`Stage` member after self/cls (its static and class methods unwrapped)."""
    func = getattr(member, "__func__", member)
    names = [p.name for p in inspect.signature(func).parameters.values()]
    return tuple(names[0 if isinstance(member, staticmethod) else 1 :])


#: Each member of :class:`Stage` (but ``Options``): (required, the positional parameters it must accept).
MEMBERS: dict[str, tuple[bool, tuple[str, ...]]] = {
    name: (name in REQUIRED, _arguments(Stage.__dict__[name]))
    for name in ("from_context", "save_model", "train_globs", "evaluate")
}


def _positional(func: Any, drop_first: bool) -> int | None:
    """How many positional arguments ``func`` takes (None: any number)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return n - 1 if drop_first else n


def protocol_errors(cls: type) -> list[str]:
    """What ``cls`` lacks of the stage protocol, one phrase each (empty: it conforms)."""
    errors = []
    for name, (required, args) in MEMBERS.items():
        member = inspect.getattr_static(cls, name, None)
        if member is None:
            if required:
                errors.append(f"no {name}({', '.join(args)})")
            continue
        func = getattr(cls, name)
        if not callable(func):
            errors.append(f"{name} is not callable")
            continue
        # Bound through the class: a classmethod or staticmethod already dropped cls; a plain method has self.
        plain = inspect.isfunction(member)
        n = _positional(func, drop_first=plain)
        if n is not None and n < len(args):
            errors.append(f"{name} must take ({', '.join(args)}), takes {n} argument(s)")
    options = getattr(cls, "Options", None)
    if options is not None and not is_dataclass(options):
        errors.append("Options is not a dataclass")
    return errors


def check_stage(cls: type, where: str) -> type:
    """``cls`` if it conforms to the stage protocol, else a :class:`ConfigError` naming ``where`` and each gap."""
    errors = protocol_errors(cls)
    if errors:
        raise ConfigError(f"{where}: '{cls.__module__}:{cls.__qualname__}' is not a stage: {'; '.join(errors)} "
                          "(see must.stages.protocol)")
    return cls
