"""``typing.Literal`` fields of config dataclasses: the values each allows, checked the same way for every one.

A field annotated ``Literal["csv", "wandb", "none"]`` (or ``Optional[...]``, ``List[...]``, ``Dict[str, ...]`` of
one) names its allowed values once; :func:`check_choices` walks a dataclass schema and a recipe's values for it
(raw YAML mappings or dataclass instances) and refuses the first value outside them, by its dotted key.

Importing this module also lets omegaconf < 2.4 read such fields (as their values' type, e.g. ``str``):
it knows no ``Literal`` and would refuse the schema itself. omegaconf 2.4 reads them natively.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin

import omegaconf._utils as _oc_utils

from must.errors import ConfigError


class BadChoice(ConfigError):
    """A value outside its ``Literal`` field's allowed values; ``key`` is dotted from the checked root."""

    def __init__(self, key: str, value: Any, allowed: tuple):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"key '{key}': {self.reason}")

    @property
    def reason(self) -> str:
        """What is wrong, without the key: ``'ppo' is not one of: grpo, dr_grpo, dapo, bnpo``."""
        return f"{self.value!r} is not one of: {', '.join(map(str, self.allowed))}"


@functools.cache
def hints(schema: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (``from __future__ import annotations`` leaves strings)."""
    return typing.get_type_hints(schema)


def choices(tp: Any) -> tuple | None:
    """The allowed values of a ``Literal`` annotation (through ``Optional``), else None."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if get_origin(tp) is Union:
        inner = [a for a in get_args(tp) if a is not type(None)]
        return choices(inner[0]) if len(inner) == 1 else None
    return None


def check_choices(schema: type, values: Any, key: str) -> None:
    """Refuse (:class:`BadChoice`) the first ``Literal`` field of ``schema`` or its nested dataclasses whose value
    in ``values`` (a mapping or an instance of ``schema``) is not allowed; absent keys keep their defaults."""
    for f in fields(schema):
        if isinstance(values, dict):
            if f.name not in values:
                continue
            value = values[f.name]
        elif is_dataclass(values):
            value = getattr(values, f.name)
        else:
            return  # not a mapping: a wrong type is the schema merge's to report
        check_value(hints(schema)[f.name], value, f"{key}.{f.name}" if key else f.name)


def check_value(tp: Any, value: Any, key: str) -> None:
    """Check one value against its annotation ``tp`` (see :func:`check_choices`)."""
    allowed = choices(tp)
    if allowed is not None:
        if value is not None and not _interpolation(value) and value not in allowed:
            raise BadChoice(key, value, allowed)
        return
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) is Union else [tp]
    if len(args) != 1:
        return
    tp = args[0]
    origin = get_origin(tp)
    if is_dataclass(tp):
        check_choices(tp, value, key)
    elif origin in (list, typing.List) and isinstance(value, list):
        for i, item in enumerate(value):
            check_value(get_args(tp)[0], item, f"{key}[{i}]")
    elif origin in (dict, typing.Dict) and isinstance(value, dict) and len(get_args(tp)) == 2:
        for name, item in value.items():
            check_value(get_args(tp)[1], item, f"{key}.{name}")


def _interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


# ----------------------------------------------------------------------------------------- omegaconf < 2.4


def _without_literals(tp: Any) -> Any:
    """``tp`` with every ``Literal[...]`` in it replaced by its values' type (``Literal["a", "b"]`` -> ``str``)."""
    if get_origin(tp) is Literal:
        kinds = {type(a) for a in get_args(tp)}
        return kinds.pop() if len(kinds) == 1 else Any
    args = get_args(tp)
    if not args:
        return tp
    plain = tuple(_without_literals(a) for a in args)
    if get_origin(tp) is Union:
        return Union[plain]  # noqa: UP007  (built from a tuple: no `X | Y` spelling)
    if get_origin(tp) in (list, typing.List):
        return typing.List[plain[0]]
    if get_origin(tp) in (dict, typing.Dict):
        return typing.Dict[plain[0], plain[1]]
    return tp


def _literal_free_hints(get_type_hints: Any) -> Any:
    def get_hints(obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {k: _without_literals(v) for k, v in get_type_hints(obj, *args, **kwargs).items()}

    get_hints.must_literal_free = True
    return get_hints


# omegaconf 2.4 added is_literal_annotation with its Literal support; before it, its structured-config reader
# (omegaconf._utils.get_type_hints, on every dataclass it wraps) sees the Literal fields as plain types.
if not hasattr(_oc_utils, "is_literal_annotation") and not getattr(_oc_utils.get_type_hints, "must_literal_free", False):
    _oc_utils.get_type_hints = _literal_free_hints(_oc_utils.get_type_hints)
