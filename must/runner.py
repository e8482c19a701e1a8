"""The recipe runner: stages in order, each handed the saved model of its ``init_from``.

Per stage it writes ``OUTPUT_DIR/<stage>/record.json`` (config and hash, times, global step, metrics,
artifact) and ``OUTPUT_DIR/<stage>/model/``. A finished stage with an unchanged hash is skipped; a
changed one is refused unless restarted; an unfinished one continues from ``checkpoints/last.ckpt``
with ``resume=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from must import strategies
from must.config import (
    RecipeConfig,
    StageConfig,
    StageContext,
    dump_yaml,
    stage_class,
    stage_hash,
    stage_options,
    to_dict,
)
from must.errors import ConfigError, MustError, RunInterrupted
from must.files import TMP_SUFFIX, ensure_dir, remove_quietly, write_atomic, write_or_name
from must.lock import OutputLock, describe_stale

RECORD = "record.json"
RUN_LOG = "run.log"
LAST_CKPT = "last.ckpt"


@dataclass
class RunOptions:
    """How ``must run`` treats stages already on disk."""

    resume: bool = False
    """Continue an unfinished stage from its last checkpoint."""
    only: str | None = None
    """Run just this stage."""
    from_stage: str | None = None
    """Run this stage and every later one."""
    restart: str | None = None
    """Discard this stage's outputs (and every later stage's) and run them again."""


def run_recipe(recipe: RecipeConfig, opts: RunOptions | None = None) -> dict[str, dict]:
    """Run the recipe's stages; returns stage name -> its record (as written to record.json).

    The output folder is locked for the whole run (:class:`~must.lock.OutputLock`): a second run on it,
    ``--resume`` or not, is refused naming the first one's PID.
    """
    opts = opts or RunOptions()
    out = Path(recipe.output_dir)
    names = [s.name for s in recipe.stages]
    for flag, value in (("--only", opts.only), ("--from", opts.from_stage), ("--restart", opts.restart)):
        if value is not None and value not in names:
            raise MustError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    from must.console import LibraryNoise

    if not _is_main_process():  # a DDP worker Lightning launched: rank 0 holds the lock and decides
        with LibraryNoise(out / f"run.rank{_global_rank()}.log"):
            return _run_stages(recipe, opts, out)
    ensure_dir(out, "key 'output_dir':")
    with OutputLock(out) as lock:
        if lock.stale is not None:
            log(f"output_dir {out}: {describe_stale(lock.stale)}")
        seen: dict[str, list[str]] = {"skipped": [], "started": []}
        t0 = time.time()
        noise = LibraryNoise(out / RUN_LOG)
        try:
            with noise:
                return _run_stages(recipe, opts, out, seen)
        finally:  # also after a failure: what finished, what stopped and where everything is
            _print_summary(recipe, out, seen, noise, time.time() - t0)


def _print_summary(recipe: RecipeConfig, out: Path, seen: dict[str, list[str]], noise: Any, seconds: float) -> None:
    """The closing summary (:func:`must.console.summary_lines`) from the records on disk; only the hidden
    messages' line when no stage was reached (a recipe refused before any work)."""
    from must.console import summary_lines

    if not seen["skipped"] and not seen["started"]:
        if noise.summary():
            log(noise.summary())
        return
    names = [s.name for s in recipe.stages]
    records = {}
    for name in names:
        try:
            records[name] = read_record(out / name)
        except MustError:  # an unreadable record is reported where it is read; the summary just says "not run"
            records[name] = None
    lines = summary_lines({k: v for k, v in records.items() if v}, out, names, seen["skipped"], noise.summary(),
                          seconds)
    print("\n" + "\n".join(lines), flush=True)


def _run_stages(recipe: RecipeConfig, opts: RunOptions, out: Path, seen: dict[str, list[str]] | None = None,
                ) -> dict[str, dict]:
    """Run the selected stages; ``seen`` collects the names of the stages skipped and started."""
    seen = seen if seen is not None else {"skipped": [], "started": []}
    names = [s.name for s in recipe.stages]
    selected = _selected(names, opts)
    for stage in recipe.stages:  # before any stage runs: a GPU-only strategy on the CPU fails now, not at stage 3
        if stage.name in selected:
            check_strategy(stage)
    hashes = _stage_hashes(recipe)
    discarded = names[names.index(opts.restart):] if opts.restart is not None else []
    main = _is_main_process()
    # Every selected stage is judged (finished, changed, resumable) before any work, so a refused run
    # changes nothing on disk: not recipe.yaml, not the stages --restart would discard.
    plans = {
        s.name: _plan_stage(s, out / s.name, None if s.name in discarded else read_record(out / s.name),
                            hashes[s.name], opts.resume, fresh=s.name in discarded)
        for s in recipe.stages if s.name in selected
    } if main else {}
    if main:
        write_or_name(out / "recipe.yaml", dump_yaml(recipe))
        _discard(out, discarded, opts.restart)
    group = _run_group(out, recipe.name)

    from must.data.cache import run_tracks

    # One track cache for the run (data.track_cache_bytes): stage 1's renders serve stages 2-4 and every
    # evaluation, and are freed when the run ends.
    with run_tracks(recipe.data):
        return _run_selected(recipe, opts, out, selected, plans, hashes, group, seen)


def _run_selected(recipe: RecipeConfig, opts: RunOptions, out: Path, selected: set[str], plans: dict,
                  hashes: dict[str, str], group: str, seen: dict[str, list[str]]) -> dict[str, dict]:
    """Run (or skip, as planned) each selected stage in order; the records of every stage on disk."""
    records: dict[str, dict] = {}
    for stage in recipe.stages:
        stage_dir = out / stage.name
        if stage.name not in selected:
            record = read_record(stage_dir)
            if record:
                records[stage.name] = record
            continue
        plan = plans.get(stage.name) or _plan_stage(stage, stage_dir, read_record(stage_dir), hashes[stage.name],
                                                    opts.resume, main=False)
        if plan.note:
            log(plan.note)
        if plan.skip:
            records[stage.name] = plan.record
            seen["skipped"].append(stage.name)
            continue
        init_dir = _init_dir(recipe, stage, out, records)
        seen["started"].append(stage.name)
        records[stage.name] = run_stage(recipe, stage, stage_dir, init_dir, hashes[stage.name], group, plan.ckpt)
    return records


def _stage_hashes(recipe: RecipeConfig) -> dict[str, str]:
    """Stage name -> its config hash, each including its ``init_from`` stage's hash."""
    hashes: dict[str, str] = {}
    for stage in recipe.stages:
        upstream = hashes.get(stage.init_from) if stage.init_from else None
        hashes[stage.name] = stage_hash(recipe, stage, upstream)
    return hashes


def _selected(names: list[str], opts: RunOptions) -> set[str]:
    if opts.only:
        return {opts.only}
    if opts.from_stage:
        return set(names[names.index(opts.from_stage):])
    return set(names)


@dataclass
class StagePlan:
    """What the runner will do with one selected stage, decided before any stage runs."""

    skip: bool = False
    """Finished earlier with the same config: reuse its record."""
    ckpt: str | None = None
    """Checkpoint to resume from (None: start from step 0)."""
    note: str | None = None
    """What to tell the user when the stage's turn comes."""
    record: dict | None = None
    """The earlier record (for a skipped stage)."""


def _plan_stage(
    stage: StageConfig, stage_dir: Path, record: dict | None, config_hash: str, resume: bool,
    main: bool = True, fresh: bool = False,
) -> StagePlan:
    """Skip, resume or start ``stage``; MustError when its folder holds a different config or an unfinished run
    without ``--resume``. ``fresh``: the folder is about to be discarded (``--restart``)."""
    ckpt = stage_dir / "checkpoints" / LAST_CKPT
    has_ckpt = ckpt.exists() and not fresh
    if record and record.get("status") == "finished":
        if record.get("config_hash") == config_hash:
            return StagePlan(skip=True, record=record,
                             note=f"stage '{stage.name}': finished earlier with the same config, skipped")
        raise MustError(
            f"stage '{stage.name}' finished earlier with a different config (hash "
            f"{record.get('config_hash')} -> {config_hash}); run again with "
            f"--restart {stage.name} to discard it and the stages after it"
        )
    if record and record.get("status") == "running" and not main:
        # A DDP worker that Lightning launched (it re-runs this command) while rank 0 runs this stage:
        # follow rank 0's decision instead of judging the half-written stage itself.
        return StagePlan(ckpt=record.get("resume_from"))
    if record is None and not has_ckpt:
        return StagePlan()
    if record is not None and record.get("config_hash") != config_hash:
        raise MustError(
            f"stage '{stage.name}' has an unfinished run with a different config; run again with "
            f"--restart {stage.name} to discard it"
        )
    if not has_ckpt:  # nothing to resume: the earlier attempt stopped before its first checkpoint
        why = str(record.get("error") or record.get("status"))[:300]
        return StagePlan(note=f"stage '{stage.name}': an earlier attempt stopped before its first checkpoint "
                              f"({why}); starting over")
    step = checkpoint_step(ckpt)
    held = f"its checkpoint {ckpt} holds step {step}" if step is not None else f"a checkpoint in {ckpt.parent}"
    if not resume:
        raise MustError(
            f"stage '{stage.name}' has an unfinished run ({held}); "
            f"pass --resume to continue it or --restart {stage.name} to start it over"
        )
    return StagePlan(ckpt=str(ckpt), note=f"stage '{stage.name}': resuming from {ckpt}"
                                          + (f" (step {step})" if step is not None else ""))


def checkpoint_step(ckpt: Path) -> int | None:
    """The global step a Lightning checkpoint file holds, read without loading its tensors (``mmap``); None
    for a sharded checkpoint folder or a file that does not load."""
    import torch

    if not ckpt.is_file():
        return None
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001  a damaged file is reported by the resume itself, with torch's reason
        return None


def _init_dir(recipe: RecipeConfig, stage: StageConfig, out: Path, records: dict) -> Path | None:
    if stage.init_from is None:
        return None
    if stage.init_from in records or stage.init_from in [s.name for s in recipe.stages]:
        record = records.get(stage.init_from)
        if not record or record.get("status") != "finished":
            raise MustError(
                f"stage '{stage.name}' starts from stage '{stage.init_from}', which has not finished; "
                f"run it first (drop --only/--from)"
            )
        return Path(record["model_dir"])
    return Path(stage.init_from)


# ----------------------------------------------------------------------------------------- one stage


def run_stage(
    recipe: RecipeConfig,
    stage: StageConfig,
    stage_dir: Path,
    init_dir: Path | None,
    config_hash: str,
    group: str,
    ckpt_path: str | None = None,
) -> dict:
    """Build, fit, save and (optionally) evaluate one stage; returns its record."""
    import lightning as L

    cls = stage_class(stage.kind, f"stage '{stage.name}' kind")
    options = stage_options(cls, stage.options, f"stage '{stage.name}' key 'options")
    seed = stage_seed(recipe.seed, stage.name)
    L.seed_everything(seed, workers=True, verbose=False)
    ctx = StageContext(recipe, stage, options, init_dir, stage_dir, seed)
    record = _new_record(recipe, stage, config_hash, stage_dir, seed, init_dir)
    record["resume_from"] = ckpt_path
    if _is_main_process():
        ensure_dir(stage_dir, f"stage '{stage.name}':")
        _remove_temp_files(stage_dir)  # what a run killed in the middle of a write left
        try:
            _write_record(stage_dir, record)
        except OSError as exc:
            raise MustError(f"stage '{stage.name}': cannot write {stage_dir / RECORD} ({exc.strerror or exc}); "
                            "nothing was started") from None
    log(f"stage '{stage.name}' ({stage.kind}) starting" + (f" from {init_dir}" if init_dir else ""))
    t0 = time.time()
    trainer = None
    try:
        module = cls.from_context(ctx)
        resume_step = checkpoint_step(Path(ckpt_path)) if ckpt_path else None
        evals = [initial_evaluation(stage, stage_dir, record)] if getattr(options, "eval_init", False) else []
        trainer = build_trainer(recipe, stage, stage_dir, group, resume_step, evals)
        record["wandb"] = wandb_location(trainer, group)
        if record["wandb"]:
            where = record["wandb"]["url"] or f"offline run in {record['wandb']['dir']}"
            log(f"stage '{stage.name}': W&B {where}")
        if stage.trainer.activation_checkpointing:
            enable_activation_checkpointing(module)
        if strategies.is_fsdp2(stage.trainer.strategy):
            _add_fsdp2_hook(module)
        # weights_only: a checkpoint is data, never code (safe to resume from a file someone sent you).
        trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        _check_finite(trainer, stage)
        record["global_step"] = int(trainer.global_step)
        record["metrics"] = _scalar_metrics(trainer.callback_metrics)
        if strategies.sharded_weights(stage.trainer.strategy):
            # Sharded weights: every rank takes part in gathering them; rank 0 saves and evaluates an
            # unsharded copy (a sharded module cannot run on one rank alone).
            module = _unsharded_module(cls, ctx, trainer, module)
        if trainer.is_global_zero:
            save_model_atomic(module, stage_dir / "model")
            if getattr(options, "eval_final", True) and hasattr(module, "evaluate"):
                record.setdefault("eval", {})["test"] = module.evaluate(stage_dir / "eval", f"after {stage.name}")
        trainer.strategy.barrier()
        record.update(status="finished", ended_at=_now(), seconds=round(time.time() - t0, 2))
        if trainer.is_global_zero:
            _write_record(stage_dir, record)
    except BaseException as exc:
        error = _stage_failed(stage, stage_dir, record, trainer, exc)
        if error is None:
            raise
        raise error from exc
    _finish_logger(trainer)
    log(f"stage '{stage.name}' finished at step {record['global_step']} in {record['seconds']} s")
    return record


def initial_evaluation(stage: StageConfig, stage_dir: Path, record: dict) -> Any:
    """The callback behind ``options.eval_init``: on rank 0, once the model is on its device and before the first
    step, ``module.evaluate(<stage>/eval_init, ...)`` into ``record["eval"]["init"]``; not again on a resume."""
    import lightning as L

    class InitialEvaluation(L.Callback):
        def on_fit_start(self, trainer: Any, module: Any) -> None:
            out = stage_dir / "eval_init"
            if trainer.is_global_zero and trainer.global_step == 0 and not (out / "scores.json").exists():
                record.setdefault("eval", {})["init"] = module.evaluate(out, f"before {stage.name}")

    return InitialEvaluation()


def _stage_failed(stage: StageConfig, stage_dir: Path, record: dict, trainer: Any, exc: BaseException) -> BaseException | None:
    """Record a failed or interrupted stage, in a way that cannot fail again (a full disk makes the record write
    fail too: then the last record on disk, written when it was true, stays). Returns the error to raise in
    place of ``exc`` (a message saying which stage stopped, why, and what is kept), or None to re-raise ``exc``."""
    interrupted = _is_interrupt(exc)
    ckpt = stage_dir / "checkpoints" / LAST_CKPT
    step = checkpoint_step(ckpt)
    where = f"at step {step}" if step is not None else "before its first checkpoint"
    record.update(status="interrupted" if interrupted else "failed",
                  error=f"interrupted {where}" if interrupted else f"{type(exc).__name__}: {exc}",
                  traceback=traceback.format_exc(), ended_at=_now(), checkpoint_step=step)
    if trainer is not None:
        record["global_step"] = int(trainer.global_step)
    unsaved = ""
    if _is_main_process():
        _remove_temp_files(stage_dir)
        try:
            _write_record(stage_dir, record)
        except OSError as write_exc:
            unsaved = (f"; its record could not be updated ({write_exc.strerror or write_exc}), so "
                       f"{stage_dir / RECORD} keeps what it said before the failure")
    _finish_logger(trainer, quiet=True)
    kept = (f"the last complete checkpoint is kept: {ckpt}" + (f" (step {step})" if step is not None else "")
            if ckpt.exists() else "no checkpoint was written yet")
    again = "run again with --resume" if ckpt.exists() else "run again"  # no checkpoint: nothing to resume
    if interrupted:
        return RunInterrupted(f"stage '{stage.name}' interrupted {where}; {kept}{unsaved}; {again} to continue")
    if isinstance(exc, OSError):  # a full disk, a vanished mount, a missing file: say what is safe and how to go on
        return MustError(f"stage '{stage.name}' stopped: {exc}; {kept}{unsaved}; fix it and {again}")
    if unsaved:
        log(f"stage '{stage.name}' failed{unsaved}")
    return None


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the ``SystemExit(1)`` Lightning raises while handling one."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)


def _remove_temp_files(stage_dir: Path) -> None:
    """Temp files of the atomic writes (record, checkpoints, model folder): never the current versions."""
    for tmp in [stage_dir / (RECORD + TMP_SUFFIX), stage_dir / ("model" + TMP_SUFFIX),
                *(stage_dir / "checkpoints").glob(f"*{TMP_SUFFIX}")]:
        remove_quietly(tmp)


def check_strategy(stage: StageConfig) -> None:
    """Lightning's ``fsdp`` and DeepSpeed strategies need GPUs (``must.strategies``): on the CPU say so, and name
    the one that works."""
    import torch

    t = stage.trainer
    gpu_only = strategies.strategy(t.strategy).gpu_only
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    if gpu_only and on_cpu:
        raise ConfigError(f"stage '{stage.name}': trainer.strategy '{t.strategy}' needs GPUs (Lightning refuses it "
                          "with accelerator 'cpu'); on the CPU use strategy 'fsdp2' (sharded) or 'ddp'")


def build_trainer(recipe: RecipeConfig, stage: StageConfig, stage_dir: Path, group: str, resume_step: int | None = None,
                  extra_callbacks: Sequence[Any] = ()):
    """The ``lightning.Trainer`` for a stage: its trainer block, checkpointing and logger (``resume_step``: the
    step of the checkpoint a resumed stage continues from, so its logs continue too)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary

    from must.console import StageProgress
    from must.resume import FiniteLossCallback, RNGStateCallback

    t = stage.trainer
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints",
        filename="step{step}",
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=0,
        save_last=True,
        save_on_train_epoch_end=False,
    )
    plugins = [AtomicCheckpointIO()] if strategies.plain_checkpoints(t.strategy) else None
    # Lightning's plain ModelSummary logs its table (to the run log, see must.console.LibraryNoise); the Rich
    # one it picks by default prints straight to the terminal. Our StageProgress replaces Lightning's bar
    # unless the recipe asks for that bar (enable_progress_bar: true).
    callbacks = [checkpoint, RNGStateCallback(), FiniteLossCallback(), ModelSummary(max_depth=1), *extra_callbacks]
    if not t.enable_progress_bar:
        callbacks.append(StageProgress(stage.name))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None if t.val_check_interval else 1,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        num_sanity_val_steps=0,
        # Stages shard their own data (must.resume.step_sampler: rank r reads every world-th sample,
        # resumable by global step); Lightning's wrapper would try to list an endless sampler.
        use_distributed_sampler=False,
        callbacks=callbacks,
        logger=build_logger(recipe, stage, stage_dir, group, resume_step),
        plugins=plugins,
        default_root_dir=stage_dir,
    )


def enable_activation_checkpointing(module: Any) -> int:
    """Turn on Hugging Face gradient checkpointing in every HF model inside the stage (the LLM, an HF encoder
    backbone); returns how many. Non-reentrant, so frozen inputs and LoRA-only training work."""
    count = 0
    for sub in module.modules():
        if hasattr(sub, "gradient_checkpointing_enable") and getattr(sub, "supports_gradient_checkpointing", False):
            sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            count += 1
    if count == 0:
        raise MustError("trainer.activation_checkpointing: the stage holds no Hugging Face model that supports it")
    return count


def build_strategy(t: Any) -> Any:
    """A Lightning strategy name as given, except ``fsdp2``: FSDP2 (``fully_shard``) through Lightning's
    ``ModelParallelStrategy``, data-parallel over every device (no tensor parallelism)."""
    if not strategies.is_fsdp2(t.strategy):
        return t.strategy
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not isinstance(t.devices, int):
        raise MustError(f"trainer.strategy {t.strategy}: trainer.devices must be a number of devices, got {t.devices!r}")
    return ModelParallelStrategy(data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1)


def _add_fsdp2_hook(module: Any) -> None:
    """Give the stage a ``configure_model`` that applies FSDP2 (Lightning calls it once the processes are
    up), unless the stage class defines its own."""
    import lightning as L

    if type(module).configure_model is not L.LightningModule.configure_model:
        return
    module.configure_model = lambda: shard_fsdp2(module)


def shard_fsdp2(module: Any) -> None:
    """FSDP2 over the data-parallel mesh, one ``fully_shard`` root per top-level part with trainable weights
    (``model.llm``, ``model.projector`` …), each transformer block inside it its own nested unit.

    The parts stay separate roots because the stages call them one after another (embed, project, LLM),
    not through one forward. Token embeddings are called outside the LLM's forward (prompt packing), so
    they stay whole on every rank (``ignored_params``) and must be frozen, as in the paper's stages 3-4.
    Frozen parts stay whole too (no gradients to reduce). A trainable parameter left outside every unit
    would silently diverge across ranks: refused.
    """
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = module.device_mesh["data_parallel"]
    for name, part in _trainable_parts(module):
        embeddings = {p for m in part.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        if any(p.requires_grad for p in embeddings):
            raise MustError(f"strategy fsdp2: the token embeddings in {name} train; freeze them "
                            "(options.freeze: ['*embed_tokens*']) or use strategy ddp / fsdp")
        for block in part.modules():
            if type(block).__name__.endswith(("DecoderLayer", "EncoderLayer")):
                fully_shard(block, mesh=mesh)
        fully_shard(part, mesh=mesh, ignored_params=embeddings or None)
    loose = [n for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if loose:
        raise MustError(f"strategy fsdp2: trainable parameters outside every shard unit: {loose[:3]}")


def _trainable_parts(module: Any) -> list:
    """The modules one level below the stage's model holders (``model.llm``, ``model.projector`` …) with trainable weights."""
    parts = []
    for name, child in module.named_children():
        for sub_name, sub in child.named_children():
            if any(p.requires_grad for p in sub.parameters()):
                parts.append((f"{name}.{sub_name}", sub))
    return parts


def _unsharded_module(cls: Any, ctx: StageContext, trainer: Any, module: Any) -> Any:
    """The trained module with whole weights on rank 0 (collective: every rank must call it)."""
    import torch

    if strategies.strategy(ctx.stage.trainer.strategy).family == "deepspeed":
        import deepspeed  # ZeRO-3 partitions parameters; gather them all for rank 0 (untested here: no GPU)

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            full = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if trainer.is_global_zero else {}
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        root = trainer.model if trainer.model is not None else module
        full = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.is_global_zero:
        return module
    with torch.random.fork_rng():  # building the copy must not move the training RNG
        fresh = cls.from_context(ctx)
    fresh.load_state_dict(full)
    return fresh


def build_logger(recipe: RecipeConfig, stage: StageConfig, stage_dir: Path, group: str, resume_step: int | None = None):
    """The stage's Lightning loggers: ``wandb`` (one W&B run per stage, grouped by recipe run, *and* the CSV
    metrics file), ``csv`` or ``none``.

    With ``wandb`` the W&B logger comes first, so a stage's ``self.logger`` (its rollout tables, audio and
    plots, :mod:`must.tracking`) is the W&B run; every scalar also goes to ``<stage>/logs/metrics.csv``.
    ``WANDB_MODE=disabled`` leaves the CSV file only. ``resume_step``: the stage resumes from a checkpoint at
    that step, so its CSV log continues the earlier one.
    """
    kind = recipe.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return _csv_logger(stage_dir, resume_step)
    if kind == "wandb":
        csv_logger = _csv_logger(stage_dir, resume_step)
        if wandb_mode(recipe.logger.mode) == "disabled":
            log(f"stage '{stage.name}': WANDB_MODE=disabled, so no W&B run; metrics in {stage_dir / 'logs'}")
            return csv_logger
        return [_wandb_logger(recipe, stage, stage_dir, group), csv_logger]
    raise MustError(f"logger.kind '{kind}': expected wandb, csv or none")


def _csv_logger(stage_dir: Path, resume_step: int | None):
    """Lightning's CSVLogger writing ``<stage>/logs/metrics.csv``; a resumed stage appends to that file.

    Lightning deletes ``metrics.csv`` when its folder is not empty, which erased the loss curve up to the
    checkpoint on every ``--resume``. Resumed, the rows before the checkpoint's step are kept and the later
    ones dropped: the resumed run trains those steps again and logs them itself.
    """
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    if resume_step is None:
        return CSVLogger(save_dir=str(stage_dir), name="logs", version="")

    class _ContinuedWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            self.metrics_keys = keep_rows_before(Path(self.metrics_file_path), resume_step)

    class _ContinuedCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _ContinuedWriter(log_dir=self.log_dir)
            return self._experiment

    return _ContinuedCSVLogger(save_dir=str(stage_dir), name="logs", version="")


def keep_rows_before(metrics_csv: Path, step: int) -> list[str]:
    """Keep the rows of a Lightning ``metrics.csv`` logged before global step ``step``; returns its header."""
    import csv

    if not metrics_csv.is_file():
        return []
    with metrics_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("step") not in (None, "") and float(row["step"]) < step]
    with metrics_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return header


def _wandb_logger(recipe: RecipeConfig, stage: StageConfig, stage_dir: Path, group: str):
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(recipe.logger.mode)
    # A stable id per (recipe run, stage) so --resume appends to the same W&B run.
    run_id = f"{group}-{stage.name}".replace("/", "-")[:120]
    logger = WandbLogger(
        project=recipe.logger.project,
        entity=recipe.logger.entity,
        name=f"{recipe.name}/{stage.name}",
        group=group,
        job_type=stage.kind if ":" not in stage.kind else "custom",
        tags=list(recipe.logger.tags),
        save_dir=str(Path(recipe.output_dir)),
        offline=mode == "offline",
        id=run_id,
        resume="allow",
        config={"recipe": to_dict(recipe), "stage": stage.name},
    )
    # Lightning always passes anonymous=None, which wandb (>= 0.19) warns about on stderr on every run,
    # before WANDB_SILENT applies; None is wandb's default anyway.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def wandb_location(trainer: Any, group: str) -> dict | None:
    """Where the stage's W&B run is: ``{"dir": its run folder, "url": its page or None offline, "group"}``;
    None without a W&B logger. Starts the run (Lightning would at fit start). Rank 0 only."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            folder = getattr(run, "dir", None)
            if not folder:
                return None
            return {"dir": str(Path(folder).parent), "url": getattr(run, "url", None), "group": group}
    return None


def wandb_mode(mode: str) -> str:
    """Resolve ``auto``: online only when W&B is configured on this machine (an API key in ``WANDB_API_KEY``
    or from ``wandb login``), so a run never prompts and never needs the network otherwise.

    ``WANDB_MODE`` wins over the recipe: ``offline``/``dryrun`` -> offline, ``disabled`` -> disabled (the runner
    then keeps the CSV metrics only).
    """
    if mode not in ("auto", "online", "offline"):
        raise MustError(f"logger.mode '{mode}': expected auto, online or offline")
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "disabled":
        return "disabled"
    if env in ("offline", "dryrun"):
        return "offline"
    if mode != "auto":
        return mode
    return "online" if wandb_configured() else "offline"


def wandb_configured() -> bool:
    """Whether W&B has an API key here without asking: ``WANDB_API_KEY``, or a ``wandb login`` entry for its
    host (``WANDB_BASE_URL``, default api.wandb.ai) in the netrc file (``NETRC``, default ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return netrc.is_file() and f"machine {host}" in " ".join(netrc.read_text(errors="ignore").split())
    except OSError:
        return False


def _finish_logger(trainer: Any, quiet: bool = False) -> None:
    """Close the stage's W&B run; ``quiet`` on a failure path, where a second error must not hide the first."""
    from lightning.pytorch.loggers import WandbLogger

    if trainer is None:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            try:
                logger.experiment.finish()
            except Exception as exc:  # noqa: BLE001
                if not quiet:
                    raise
                log(f"could not close the W&B run: {exc}")


# ----------------------------------------------------------------------------------------- checkpoints


def _atomic_checkpoint_io_class():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class _AtomicCheckpointIO(TorchCheckpointIO):
        """Write each checkpoint to a temp file, then rename: a crash mid-save keeps the previous one."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            path = Path(path)
            tmp = path.with_name(path.name + TMP_SUFFIX)
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
                os.replace(tmp, path)
            except BaseException:
                remove_quietly(tmp)  # a full disk must not also keep half a checkpoint's bytes
                raise

    return _AtomicCheckpointIO


def AtomicCheckpointIO():  # a factory named like the class it returns
    """A Lightning CheckpointIO whose saves are atomic (temp file + rename)."""
    return _atomic_checkpoint_io_class()()


def save_model_atomic(module: Any, target: Path) -> None:
    """Save the stage's model to ``target`` via a temp folder and a rename, never leaving half a folder."""
    tmp = target.with_name(target.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        module.save_model(tmp)
    except BaseException:
        remove_quietly(tmp)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _check_finite(trainer: Any, stage: StageConfig) -> None:
    import math

    loss = trainer.callback_metrics.get("train/loss")
    if loss is not None and not math.isfinite(float(loss)):
        raise MustError(f"stage '{stage.name}': training loss became {float(loss)}; the last good checkpoint is kept")


# ----------------------------------------------------------------------------------------- records


def _new_record(
    recipe: RecipeConfig, stage: StageConfig, config_hash: str, stage_dir: Path, seed: int, init_dir: Path | None
) -> dict:
    return {
        "stage": stage.name,
        "kind": stage.kind,
        "status": "running",
        "config": to_dict(stage),
        "config_hash": config_hash,
        "init_from": str(init_dir) if init_dir else None,
        "seed": seed,
        "started_at": _now(),
        "ended_at": None,
        "seconds": None,
        "global_step": 0,
        "metrics": {},
        "model_dir": str(stage_dir / "model"),
    }


def read_record(stage_dir: Path) -> dict | None:
    """A stage folder's ``record.json`` (None when the stage has not started); a corrupt one is named."""
    path = stage_dir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MustError(f"{path}: unreadable record ({exc}); delete it or use --restart") from None


def _write_record(stage_dir: Path, record: dict) -> None:
    """Atomically (a failed write keeps the previous record whole and removes its temp file); raises OSError."""
    write_atomic(stage_dir / RECORD, json.dumps(record, indent=2, default=str))


def _discard(out: Path, stages: list[str], restart: str | None) -> None:
    for stage in stages:
        if (out / stage).exists():
            log(f"--restart {restart}: discarding {out / stage}")
            shutil.rmtree(out / stage)


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    result = {}
    for key, value in metrics.items():
        try:
            result[key] = float(value)
        except (TypeError, ValueError):
            continue
    return result


def _run_group(out: Path, name: str) -> str:
    """A stable id for this recipe run (kept in OUTPUT_DIR/run.json) that groups its stages' W&B runs."""
    path = out / "run.json"
    if path.is_file():
        return json.loads(path.read_text())["group"]
    group = f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    if _is_main_process():
        write_or_name(path, json.dumps({"group": group}))
    return group


def stage_seed(seed: int, stage_name: str) -> int:
    """A stage's own seed: the recipe seed mixed with the stage name, the same on every run and rank."""
    return (seed * 1_000_003 + zlib.crc32(stage_name.encode())) % (2**31 - 1)


def _global_rank() -> str:
    """This process's global rank as the launcher set it (torchrun, SLURM, Lightning), for per-rank file names."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var]
    return f"{os.environ.get('NODE_RANK', '0')}-{os.environ.get('LOCAL_RANK', '0')}"


def _is_main_process() -> bool:
    """False in the extra processes Lightning launches for DDP (they must not delete or write records).

    torchrun and SLURM (``srun``) start every process themselves and say its global rank (``RANK``,
    ``SLURM_PROCID``); a process Lightning launched has ``LOCAL_RANK`` / ``NODE_RANK``.
    """
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return os.environ[var] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def log(message: str) -> None:
    """Print a runner message once (rank 0 only; DDP workers re-run the same command)."""
    if _is_main_process():
        print(f"[must] {message}", flush=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
