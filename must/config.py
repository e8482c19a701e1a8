"""Typed recipes: OmegaConf structured configs, loaded from YAML with dotted ``key=value`` overrides.

Every user mistake (unknown key, wrong type, missing value, a value outside a ``Literal`` field's values, an
unknown strategy, a trainer key the stage kind refuses, a renamed option, bad stage wiring) becomes a
:class:`~must.errors.ConfigError` naming the key and where it was set (the file and its line, or the override),
before any work starts.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from must import strategies
from must.data.config import DataConfig
from must.errors import ConfigError, MustError
from must.literals import BadChoice, check_choices
from must.models.config import ModelConfig
from must.stages.options import encoder_adapt, grpo, lm_adapt, sft

#: The four MusT stage kinds -> the class that implements each (imported only when used).
STAGE_KINDS: dict[str, str] = {
    "encoder_adapt": "must.stages.encoder_adapt:EncoderAdaptation",
    "lm_adapt": "must.stages.lm_adapt:LMAdaptation",
    "sft": "must.stages.sft:SFTStage",
    "grpo": "must.stages.grpo:GRPOStage",
}

#: The four kinds' ``Options`` dataclasses (each stage class's ``Options``), from modules that import neither
#: torch nor lightning: a recipe of built-in kinds is checked without importing its stages (seconds).
STAGE_OPTIONS: dict[str, type] = {
    "encoder_adapt": encoder_adapt.Options,
    "lm_adapt": lm_adapt.Options,
    "sft": sft.Options,
    "grpo": grpo.Options,
}

#: Stage options renamed to one vocabulary across the stages: old name -> new name. A recipe still using an old
#: name its stage's ``Options`` lacks is told the new one, by key.
RENAMED_OPTIONS: dict[str, str] = {
    "learning_rate": "lr",
    "trainable": "train",
    "prompts_per_step": "batch_size",
    "questions_per_track": "questions_per_clip",
    "eval_untrained": "eval_init",
    "val_max_new_tokens": "eval_max_new_tokens",
    "dynamic_sampling": "refill_groups",
    "rewards": "reward_funcs",
}

#: Trainer keys a stage kind cannot take: key -> (the values that leave it off, the stage option doing its job).
#: GRPO optimises manually (several optimiser passes over one batch of rollouts), and Lightning refuses automatic
#: gradient clipping and accumulation then (``__verify_manual_optimization_support`` in
#: ``lightning/pytorch/trainer/configuration_validator.py``), only when the stage starts, after the earlier ones ran.
REFUSED_TRAINER_KEYS: dict[str, dict[str, tuple[tuple, str]]] = {
    "grpo": {
        "gradient_clip_val": ((None, 0), "max_grad_norm"),
        "accumulate_grad_batches": ((1,), "batch_size"),
    },
}


@dataclass
class LoggerConfig:
    """Where metrics go."""

    kind: Literal["wandb", "csv", "none"] = "csv"
    """``wandb`` (and the CSV file), ``csv`` or ``none``."""
    project: str = "must"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); None uses your default."""
    mode: Literal["auto", "online", "offline"] = "auto"
    """W&B mode: ``auto`` (online only if W&B is configured on this machine), ``online`` or ``offline``."""
    tags: List[str] = field(default_factory=list)
    """W&B tags added to every stage's run."""


@dataclass
class TrainerConfig:
    """A stage's ``lightning.Trainer`` settings (the names are Lightning's, except checkpointing)."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """``auto``, ``cpu``, ``gpu`` (= ``cuda``) or ``mps``."""
    devices: Any = "auto"
    """Number of devices, a list of device ids, or ``auto``."""
    num_nodes: int = 1
    """Number of machines."""
    strategy: str = "auto"
    """``auto``, ``ddp``, ``fsdp``, ``fsdp2``, ``deepspeed_stage_2`` …: a name of ``must.strategies.STRATEGIES``."""
    precision: Literal["32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
                       "transformer-engine-float16"] = "32-true"
    """A Lightning precision by its full name (not the aliases ``16``, ``bf16``: ``must plan`` reads the name)."""
    max_steps: int = 100
    """Optimizer steps to train for."""
    val_check_interval: Optional[int] = None
    """Validate every N training steps; None validates at the end of each epoch only."""
    limit_val_batches: Optional[int] = None
    """Cap on validation batches per validation run; None uses them all."""
    log_every_n_steps: int = 10
    """Log training metrics every N steps."""
    accumulate_grad_batches: int = 1
    """Batches whose gradients are summed before each optimizer step."""
    gradient_clip_val: Optional[float] = None
    """Clip the gradient norm to this value; None disables clipping."""
    checkpoint_every_n_steps: int = 50
    """Write ``checkpoints/last.ckpt`` every N optimizer steps (for ``--resume``)."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    deterministic: bool = False
    """Ask PyTorch for deterministic algorithms (slower; for exact reproducibility)."""
    activation_checkpointing: bool = False
    """Recompute each Hugging Face model's layer activations in backward instead of storing them (less memory, ~30 % more compute)."""


@dataclass
class StageConfig:
    """One stage of the recipe."""

    name: str = MISSING
    """Unique stage name; its outputs go to ``OUTPUT_DIR/<name>/``."""
    kind: str = MISSING
    """``encoder_adapt``, ``lm_adapt``, ``sft``, ``grpo``, or ``package.module:Class`` (your LightningModule)."""
    init_from: Optional[str] = None
    """An earlier stage's name, or a model folder; None builds the model from the ``model`` block."""
    options: Dict[str, Any] = field(default_factory=dict)
    """The stage kind's own options (see its ``Options`` dataclass)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings for this stage."""


@dataclass
class RecipeConfig:
    """A whole recipe: model, data, logger and an ordered list of stages."""

    name: str = MISSING
    """Recipe name; names the output folder and groups the W&B runs."""
    seed: int = 0
    """Base seed; each stage derives its own from it and its name."""
    output_dir: str = "runs/${name}"
    """Where every stage writes its folder."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Metrics logging."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The audio-language model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation data."""
    stages: List[StageConfig] = field(default_factory=list)
    """The stages, run in this order."""


@dataclass
class StageContext:
    """Everything a stage class needs to build itself (see :func:`must.runner.run_recipe`)."""

    recipe: RecipeConfig
    """The whole validated recipe."""
    stage: StageConfig
    """This stage's block."""
    options: Any
    """The stage class's ``Options`` instance (or the raw dict when the class has none)."""
    init_dir: Optional[Path]
    """Model folder to start from, or None to build from ``recipe.model``."""
    stage_dir: Path
    """``OUTPUT_DIR/<stage>/``."""
    seed: int
    """This stage's seed (already applied)."""


# ----------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load, override, validate and resolve a recipe YAML into a :class:`RecipeConfig`.

    ``overrides`` are dotted ``key=value`` strings (``seed=3``, ``stages.sft.trainer.max_steps=5``;
    a stage may be named by its index or its name). Raises :class:`ConfigError` naming the key and the file
    line or override that set it.
    """
    raw, src = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item, src)
    _check_choices(raw, src)
    cfg = _merge_schema(raw, src)
    _check_missing(cfg, src.path)
    try:
        recipe: RecipeConfig = OmegaConf.to_object(cfg)  # resolves ${name} interpolations
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, src)) from None
    _check_choices(recipe, src)  # again, resolved: a value an interpolation gave
    _check_stages(recipe, src)
    return recipe


@dataclass
class _Source:
    """Where a recipe's values came from, so an error names it: the YAML file and the key's line, or an override."""

    path: Path
    """The recipe file."""
    lines: Dict[tuple, int]
    """Key parts (``("stages", "1", "trainer", "max_steps")``) -> the 1-based line of that key in the file."""
    overrides: List[tuple] = field(default_factory=list)
    """``(key parts, "key=value")`` of each command-line override, in the order applied."""

    def error(self, key: str, reason: str) -> str:
        """``reason`` for ``key`` (``stages[1].trainer.max_steps``), blamed on the last override that set it or
        one of its parents, else on the file and the line of the key (or of its nearest parent in the file)."""
        override = self._override(key)
        if override:
            return f"override '{override}': key '{key}': {reason}"
        parts = _key_parts(key)
        line = next((self.lines[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in self.lines), None)
        return f"{self.path}: key '{key}': {reason}" + (f" (line {line})" if line else "")

    def where(self, key: str) -> str:
        """The start of an error about ``key`` that another function finishes (``...: <its message>``)."""
        override = self._override(key)
        return f"override '{override}': key '{key}'" if override else f"{self.path}: key '{key}'"

    def _override(self, key: str) -> str | None:
        parts = _key_parts(key)
        return next((item for over, item in reversed(self.overrides) if parts[: len(over)] == over), None)


def _key_parts(key: str) -> tuple:
    """``stages[1].trainer.max_steps`` or ``stages.1.trainer.max_steps`` -> ``("stages", "1", "trainer", "max_steps")``."""
    return tuple(re.findall(r"[^.\[\]]+", key))


def _read_yaml(path: Path) -> tuple[DictConfig, _Source]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        data = load_yaml(text)
        lines = _key_lines(_compose(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys (name, model, data, stages …)")
    return OmegaConf.create(data), _Source(path, lines)


def _compose(text: str) -> yaml.Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _key_lines(node: yaml.Node | None, parts: tuple = ()) -> dict[tuple, int]:
    """Every key of a composed YAML document -> its line (a list item: the line of its ``-``)."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        items = [(str(k.value), k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
    elif isinstance(node, yaml.SequenceNode):
        items = [(str(i), v, v) for i, v in enumerate(node.value)]
    else:
        return out
    for name, where, value in items:
        out[parts + (name,)] = where.start_mark.line + 1
        out.update(_key_lines(value, parts + (name,)))
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build objects), reading floats as YAML 1.2 and every user does.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3`` and ``1.0e3`` were
    strings, so ``lr=1e-3`` hashed unlike ``lr=0.001`` and a resumed run was refused as changed.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """One YAML document, read safely, numbers as YAML 1.2 reads them (see :class:`_Loader`)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _apply_override(raw: DictConfig, item: str, src: _Source) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. stages.sft.trainer.max_steps=5")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    # A stage may be addressed by its name: stages.sft.x -> stages.<index of sft>.x
    if len(parts) > 1 and parts[0] == "stages" and not parts[1].isdigit():
        names = [s.get("name") for s in raw.get("stages", [])]
        if parts[1] not in names:
            raise ConfigError(f"override '{item}': no stage named '{parts[1]}' in {src.path} (stages: {names})")
        parts[1] = str(names.index(parts[1]))
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    try:
        OmegaConf.update(raw, ".".join(parts), parsed, merge=True, force_add=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override '{item}': {exc}") from None
    src.overrides.append((tuple(parts), item))


def _check_choices(values: DictConfig | RecipeConfig, src: _Source) -> None:
    """Every ``Literal`` field of the recipe's dataclasses, first before omegaconf's merge: one message on every
    version (omegaconf 2.4 would refuse them in its own words, earlier ones not at all)."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=False)
    try:
        check_choices(RecipeConfig, values, "")
    except BadChoice as exc:
        raise ConfigError(src.error(exc.key, exc.reason)) from None


def _merge_schema(raw: DictConfig, src: _Source) -> DictConfig:
    schema = OmegaConf.structured(RecipeConfig)
    # Stages are a list of structured nodes: merge them one by one so each gets the StageConfig schema.
    stages = raw.pop("stages", None) if "stages" in raw else None
    try:
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, src)) from None
    if stages is None:
        return cfg
    if not isinstance(stages, ListConfig):
        raise ConfigError(src.error("stages", "must be a list of stage blocks"))
    merged = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, DictConfig):
            raise ConfigError(src.error(f"stages[{i}]", "must be a mapping (name, kind, …)"))
        try:
            merged.append(OmegaConf.merge(OmegaConf.structured(StageConfig), stage))
        except OmegaConfBaseException as exc:
            raise ConfigError(_describe(exc, src, prefix=f"stages[{i}].")) from None
    cfg.stages = merged
    return cfg


def missing_keys(cfg: DictConfig) -> list[str]:
    """Sorted dotted keys whose value is ``???``. Not ``OmegaConf.missing_keys``: omegaconf 2.3 raises on a key
    that interpolates a missing one (``output_dir: runs/${name}``) where 2.4 lists it, so read the unresolved
    values instead (the same answer on every version: the keys a user must set)."""

    def walk(node, key: str):
        if node == MISSING:
            yield key
        elif isinstance(node, (dict, list)):
            for k, v in node.items() if isinstance(node, dict) else enumerate(node):
                yield from walk(v, f"{key}[{k}]" if isinstance(node, list) else f"{key}.{k}" if key else str(k))

    return sorted(walk(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False), ""))


def _check_missing(cfg: DictConfig, path: Path) -> None:
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(f"{path}: missing required value for key(s): {', '.join(missing)}")


def _check_stages(recipe: RecipeConfig, src: _Source) -> None:
    if not recipe.stages:
        raise ConfigError(src.error("stages", "is empty: a recipe needs at least one stage"))
    seen: list[str] = []
    for i, stage in enumerate(recipe.stages):
        key = f"stages[{i}]"
        if stage.name in seen:
            raise ConfigError(src.error(f"{key}.name", f"duplicate stage name '{stage.name}'"))
        if stage.init_from is not None and stage.init_from not in seen:
            if stage.init_from in [s.name for s in recipe.stages]:
                raise ConfigError(src.error(f"{key}.init_from", f"stage '{stage.init_from}' runs after "
                                            f"'{stage.name}'; init_from must name an earlier stage"))
            if not Path(stage.init_from).is_dir():
                raise ConfigError(src.error(f"{key}.init_from", f"'{stage.init_from}' names no earlier stage "
                                            f"(earlier: {seen or 'none'}) and no existing model folder"))
            if stage.kind in STAGE_KINDS:  # a dotted kind loads its own folders: its format is its own
                _check_init_folder(stage.init_from, src.where(f"{key}.init_from"))
        _check_trainer(stage, key, src)
        if stage.kind in STAGE_OPTIONS:
            schema = STAGE_OPTIONS[stage.kind]
        else:  # a dotted kind is checked by importing it: it names its class and the class its Options
            schema = getattr(stage_class(stage.kind, src.where(f"{key}.kind")), "Options", None)
        try:
            _options(schema, stage.options)
        except _BadKey as exc:
            raise ConfigError(src.error(f"{key}.options.{exc.key}", exc.reason)) from None
        seen.append(stage.name)


def _check_trainer(stage: StageConfig, key: str, src: _Source) -> None:
    """The strategy is one of :data:`must.strategies.STRATEGIES`; no key of :data:`REFUSED_TRAINER_KEYS` is set."""
    name = stage.trainer.strategy
    if name not in strategies.STRATEGIES:
        close = difflib.get_close_matches(name, list(strategies.STRATEGIES), n=1)
        known = ", ".join(n for n in strategies.STRATEGIES if "find_unused" not in n)
        raise ConfigError(src.error(f"{key}.trainer.strategy", f"{name!r} is not one of: {known} (each ddp one also "
                                    "with _find_unused_parameters_true or _false)"
                                    + (f"; did you mean '{close[0]}'?" if close else "")))
    for field_name, (off, option) in REFUSED_TRAINER_KEYS.get(stage.kind, {}).items():
        value = getattr(stage.trainer, field_name)
        if value not in off:
            left = "unset" if off[0] is None else f"at {off[0]}"
            raise ConfigError(src.error(
                f"{key}.trainer.{field_name}", f"{value!r}: a {stage.kind} stage optimises manually, and Lightning refuses "
                f"trainer.{field_name} then; leave it {left} and set stages.{stage.name}.options.{option} instead"))


def _check_init_folder(folder: str, where: str) -> None:
    """An ``init_from`` folder must be a complete saved model (read from its headers, nothing loaded)."""
    from must.models.folder import check_saved_model

    try:
        check_saved_model(folder)
    except MustError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------------------- stages


def stage_class(kind: str, where: str = "stage kind") -> type:
    """The LightningModule class for a stage ``kind`` (one of :data:`STAGE_KINDS` or ``pkg.mod:Class``)."""
    target = STAGE_KINDS.get(kind, kind)
    if ":" not in target:
        close = difflib.get_close_matches(kind, list(STAGE_KINDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{where}: unknown stage kind '{kind}' (one of {', '.join(STAGE_KINDS)}, "
            f"or a dotted path package.module:Class){hint}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import '{module_name}' for stage kind '{kind}': {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{where}: module '{module_name}' has no class '{class_name}'")
    from must.stages.protocol import check_stage

    return check_stage(cls, where)


def stage_options(cls: type, options: dict, where: str) -> Any:
    """Validate a stage's ``options`` dict against ``cls.Options`` (a dataclass); returns the instance."""
    return options_instance(getattr(cls, "Options", None), options, where)


def options_instance(schema: type | None, options: dict, where: str) -> Any:
    """Validate ``options`` against the dataclass ``schema``; returns the instance (a plain dict without one).

    ``where`` opens each error up to the key: ``"recipe.yaml: key 'stages[0].options"`` -> ``... 'stages[0].options.lr': ...``.
    """
    try:
        return _options(schema, options)
    except _BadKey as exc:
        raise ConfigError(f"{where}.{exc.key}': {exc.reason}") from None


class _BadKey(Exception):
    """One option refused: its key inside the options and why."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def _options(schema: type | None, options: dict) -> Any:
    """:func:`options_instance` raising :class:`_BadKey`: renamed options, ``Literal`` values, then omegaconf's types."""
    if schema is None or not is_dataclass(schema):
        return dict(options)
    names = {f.name for f in fields(schema)}
    for old in options:
        new = RENAMED_OPTIONS.get(old)
        if old not in names and new in names:
            raise _BadKey(old, f"options.{old} was renamed to options.{new}")
    try:
        check_choices(schema, dict(options), "")
    except BadChoice as exc:
        raise _BadKey(exc.key, exc.reason) from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(dict(options)))
        missing = missing_keys(merged)
        if missing:
            raise _BadKey(missing[0], "missing required value")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
        hint = _suggest(str(key).split(".")[-1], [f.name for f in fields(schema)]) if _is_unknown(exc) else ""
        raise _BadKey(str(key), f"{_reason(exc)}{hint}") from None


# ----------------------------------------------------------------------------------------- errors


def _is_unknown(exc: OmegaConfBaseException) -> bool:
    return "not in struct" in str(exc) or "ConfigKeyError" in type(exc).__name__


def _reason(exc: OmegaConfBaseException) -> str:
    if _is_unknown(exc):
        return "unknown key"
    first = str(exc).splitlines()[0]
    return re.sub(r"\s+", " ", first)


def _describe(exc: OmegaConfBaseException, src: _Source, prefix: str = "") -> str:
    key = prefix + str(getattr(exc, "full_key", "") or getattr(exc, "key", "") or "")
    reason = _reason(exc)
    if _is_unknown(exc):
        reason += _suggest(key.split(".")[-1], _valid_keys(key))
    return src.error(key, reason)


def _valid_keys(full_key: str) -> list[str]:
    """Valid keys at the level of ``full_key`` (e.g. 'stages[1].trainer.max_stpes' -> TrainerConfig fields)."""
    node: Any = RecipeConfig
    for part in re.sub(r"\[\d+\]", "", full_key).split(".")[:-1]:
        hit = next((f for f in fields(node) if f.name == part), None) if is_dataclass(node) else None
        if hit is None:
            return []
        node = StageConfig if part == "stages" else _field_type(node, hit)
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _field_type(owner: type, f: Any) -> Any:
    default = f.default_factory() if callable(f.default_factory) else f.default
    return type(default) if is_dataclass(default) else None


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")


# ----------------------------------------------------------------------------------------- helpers


def to_dict(obj: Any) -> Any:
    """A recipe (or any part of it) as plain JSON-able dicts and lists."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


# Fields that change nothing a stage computes; left out of its hash so tweaking them never forces a rerun.
_COSMETIC_TRAINER_KEYS = ("log_every_n_steps", "enable_progress_bar", "checkpoint_every_n_steps")


def stage_hash(recipe: RecipeConfig, stage: StageConfig, upstream_hash: str | None) -> str:
    """A short hash of everything that determines a stage's result (its config, model, data, seed, upstream)."""
    stage_dict = to_dict(stage)
    for key in _COSMETIC_TRAINER_KEYS:
        stage_dict["trainer"].pop(key, None)
    payload = {
        "stage": stage_dict,
        "model": to_dict(recipe.model),
        "data": to_dict(recipe.data),
        "seed": recipe.seed,
        "upstream": upstream_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_yaml(recipe: RecipeConfig) -> str:
    """The resolved recipe as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(recipe), resolve=True)
