"""Stage 3: supervised fine-tuning on the five MusTBench tasks.

Each step takes ``batch_size`` clips and asks ``questions_per_clip`` questions of each, drawn in turn
from the clip's task types (TSG onset, TSG offset, LTR, TAD, GTO, MTR) so rare types are not
starved. All questions of a clip share one sequence: the audio runs once and each question block
sees it but not the other questions (:func:`must.stages.common.pack_questions`), which gives several
times the supervision per step for nearly the same compute. The loss is answer-only, normalised per
question (a 40-token TAD answer weighs as much as a 4-token time), then averaged per task and over
the tasks of the batch (tasks balanced in every batch; ``task_weights`` to tilt it).

Trained by default: LLM LoRA, projector and time embedding (add ``encoder.*`` globs to ``train`` to
adapt encoder parts too). Validation generates answers on the validation split and logs the
MusTBench sub-metrics (through the evaluation's own generate loop, :func:`must.eval.answer_clips`);
:meth:`SFTStage.evaluate` scores the held-out test split (or the parquet's ``eval_split``) as ``must eval``
does, into ``<stage>/eval/`` (``scores.json`` with the trivial baselines, ``predictions.jsonl``, ``report.md``,
``plots/``), and prints the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import lightning as L
import torch
from torch.utils.data import DataLoader

from must.data.config import DataConfig
from must.data.datasets import EvalTracks, QATracks, RealQATracks, collate
from must.data.traces import target
from must.data.types import QA
from must.errors import ConfigError
from must.eval import answer_clips
from must.models.lalm import MusicLALM
from must.resume import step_sampler
from must.stages import common
from must.stages.options.sft import Options
from must.tracking import log_rollout_table, rollout_row


def qa_losses(model: MusicLALM, encoding, groups: List[List[QA]]) -> torch.Tensor:
    """(Q,) answer-only loss of each question (flattened over clips), one packed sequence per clip."""
    packed = common.pack_questions(model, encoding, [[q.question for q in g] for g in groups],
                                   [[target(q.answer, q.trace, model.cfg.answer_format) for q in g] for g in groups])
    return common.block_losses(model.llm, packed, by_row=model.device.type == "cpu", pointer=model.pointer)


def train_globs(model: MusicLALM, options: Options) -> tuple[list[str], list[str]]:
    """What stage 3 trains, as (train, freeze) parameter globs: ``options.train`` (by default projector, time
    embedding and LLM LoRA, as in the paper). Pure; the stage and ``must plan`` call it."""
    train = options.train if options.train is not None else Options().train
    return list(train), list(options.freeze)


class SFTStage(L.LightningModule):
    """Stage 3 (see the module docstring)."""

    Options = Options

    def __init__(self, model: MusicLALM, data: DataConfig, options: Options | None = None, seed: int = 0,
                 stage_dir: Path | None = None):
        super().__init__()
        self.model, self.data, self.seed, self.stage_dir = model, data, seed, stage_dir
        self.options = o = options or Options()
        self.tasks = list(o.tasks) if o.tasks is not None else list(data.tasks)
        if o.questions_per_clip < 1:
            raise ConfigError(f"options.questions_per_clip must be at least 1, got {o.questions_per_clip}")
        common.set_trainable(model, *train_globs(model, o))
        self.encoder_trains = any(p.requires_grad for p in model.encoder.parameters())
        reuse = o.reuse_encodings and not self.encoder_trains  # frozen encoder: each track encoded once
        self.cache = common.EncodingCache(data.encoding_cache_bytes) if reuse else None

    train_globs = staticmethod(train_globs)

    @classmethod
    def from_context(cls, ctx) -> SFTStage:
        common.check_data_source(ctx.recipe.data, ctx.stage.name)
        return cls(common.build_model(ctx), ctx.recipe.data, ctx.options, ctx.seed, ctx.stage_dir)

    # -- data ---------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        o = self.options
        if self.real:
            ds = self._train_set = RealQATracks(self.data, self.data.train_split, o.questions_per_clip,
                                                self.tasks, dict(o.type_weights), self.seed)
        else:
            ds = QATracks(self.data, "train", self.data.train_tracks, o.questions_per_clip, self.tasks,
                          dict(o.type_weights), self.seed)
        # Order and question draws are functions of the sample position: each DDP rank reads its own
        # clips, and a resumed run continues exactly where the interrupted one stopped.
        sampler = step_sampler(self, len(ds), o.batch_size, self.seed, positions=True)
        return DataLoader(ds, batch_size=o.batch_size, sampler=sampler, collate_fn=collate, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.real:
            ds = RealQATracks(self.data, self.data.eval_split, 0, self.tasks)
        else:
            ds = EvalTracks(self.data, "val", self.data.val_tracks)
        return DataLoader(ds, batch_size=1, collate_fn=collate)

    @property
    def real(self) -> bool:
        """Training on a MusTBench parquet rather than synthetic music."""
        return self.data.source == "mustbench"

    def _encode(self, batch: dict):
        if self.cache is not None:
            self.model.encoder.eval()
            return self.cache.get(self.model, batch["id"], batch["waveform"], batch["sample_rate"][0])
        return self.model.encode_audio(batch["waveform"], batch["sample_rate"][0])

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        groups = [g for g in batch["qas"]]
        keep = [i for i, g in enumerate(groups) if g]
        encoding = self._encode(batch)
        if len(keep) < len(groups):  # a clip without questions (rare: very short track)
            encoding, groups = encoding.index_select(keep), [groups[i] for i in keep]
        losses = qa_losses(self.model, encoding, groups)
        tasks = [q.task for g in groups for q in g]
        loss, per_task = common.balanced_loss(losses, tasks, self.options.task_weights)
        bs = len(groups)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for t, v in per_task.items():
            self.log(f"train/loss_{t}", v, batch_size=bs)
        self.log("train/questions", float(len(tasks)), batch_size=bs)
        if self.real:
            self.log("train/broken_audio_files", float(self._train_set.broken), batch_size=bs)
        return loss

    def on_train_start(self) -> None:
        # Frozen all-zero LoRA adapters (the tiny recipe trains the whole LLM and keeps them at zero for
        # GRPO) add exactly 0.0: switched off for the fit, ~10 % of the LLM's time, same numbers.
        self._inert_lora = common.disable_inert_lora(self.model.llm)

    def on_train_end(self) -> None:
        common.enable_lora(getattr(self, "_inert_lora", []))
        self._inert_lora = []

    def on_validation_epoch_start(self) -> None:
        self._preds: Dict[str, str] = {}
        self._refs: List[dict] = []
        self._table: list = []  # one answered question per task, for the rollout table

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        qas = batch["qas"][0]
        if not qas:
            return
        wave, rate = batch["waveform"][0], batch["sample_rate"][0]
        # The evaluation's own generate loop (must.eval.answer_clips), on this one clip.
        (result,) = answer_clips(self.model, [([q.question for q in qas], lambda: (wave, rate))],
                                 self.options.eval_max_new_tokens, batch_size=len(qas))
        answers = result["texts"]
        for q, a in zip(qas, answers):
            self._preds[q.id] = self.model.split_answer(a)[0]
            self._refs.append(q.to_row())
        seen = {r.task for r in self._table}
        for q, a in zip(qas, answers):
            if q.task not in seen and len(self._table) < 5:
                seen.add(q.task)
                self._table.append(rollout_row(q, [a], audio=batch["waveform"][0],
                                               sample_rate=batch["sample_rate"][0], boundaries=batch["boundaries"][0]))

    def on_validation_epoch_end(self) -> None:
        from must.eval import score_predictions, summary

        if self.stage_dir is not None:  # W&B table with audio and timelines, or files under <stage>/media/
            log_rollout_table(self.logger, self._table, self.global_step, self.stage_dir, key="val/rollouts")
        if not self._refs:
            return
        flat = summary(score_predictions(self._preds, self._refs))
        self.log_dict({f"val/{k}": float(v) for k, v in flat.items()
                       if v is not None and not k.startswith("baseline/") and k != "seconds"}, prog_bar=False)

    def configure_optimizers(self):
        return common.optimizer_config(self.model, self.options, common.total_steps(self.trainer))

    # -- hand-off -----------------------------------------------------------------------------

    def save_model(self, path: Path) -> None:
        """The whole MusicLALM folder (LoRA adapters included; the next stage starts from it)."""
        self.model.save_pretrained(path)

    def evaluate(self, out_dir: Path, name: str) -> dict:
        """MusTBench scores on the evaluation split (the synthetic test split, or the parquet's ``eval_split``),
        into ``out_dir`` (``scores.json``, predictions)."""
        return common.evaluate(self.model, self.data, Path(out_dir), name, self.options.eval_max_new_tokens,
                               self.options.eval_max_tracks, self.tasks)
