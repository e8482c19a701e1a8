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
MusTBench sub-metrics; :meth:`SFTStage.evaluate` scores the held-out test split into
``<stage>/eval/scores.json`` (the ``must score`` format, trivial baselines beside) and prints the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from must.data.traces import target
from must.data.config import DataConfig
from must.data.datasets import synthetic_qas, track_seed
from must.data.tasks import build_qas
from must.data.types import QA
from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.resume import read_key, step_sampler
from must.stages import common
from must.stages.options.sft import Options
from must.tracking import log_rollout_table, rollout_row


def question_type(qa: QA) -> str:
    """``TSG-onset``/``TSG-offset`` for TSG, the task name otherwise."""
    return f"TSG-{qa.qa_type}" if qa.task == "TSG" else qa.task


def pick_questions(qas: List[QA], k: int, rng: np.random.Generator,
                   type_weights: Dict[str, float] | None = None) -> List[QA]:
    """Up to ``k`` questions drawn without replacement, question types in proportion to their weights:
    each draw takes the type asked least so far relative to its weight, then a random question of that
    type. Ties go to the heavier type, then at random: so when ``k`` is below the number of types the
    heaviest are asked, and with equal weights the draw is a round-robin over the clip's types, so a
    rare type (a TSG offset) is asked whenever the clip has one."""
    pools: Dict[str, List[QA]] = {}
    for i in rng.permutation(len(qas)):
        pools.setdefault(question_type(qas[i]), []).append(qas[i])
    weights = {t: (type_weights or {}).get(t, 1.0) for t in pools}
    pools = {t: p for t, p in pools.items() if weights[t] > 0}
    asked = dict.fromkeys(pools, 0)
    out: List[QA] = []
    while len(out) < k and pools:
        # Least asked relative to weight; among equals (every type in the first round) the heavier, then
        # at random. Without the weight in the key, a first round with k below the number of types would
        # pick uniformly and ignore the weights. (asked/weight of equal ratios are equal floats.)
        r = dict(zip(pools, rng.random(len(pools))))
        t = min(pools, key=lambda u: (asked[u] / weights[u], -weights[u], -r[u]))
        out.append(pools[t].pop())
        asked[t] += 1
        if not pools[t]:
            del pools[t]
    return out


class QATracks(Dataset):
    """Training clips: the waveform and a task-balanced draw of its questions (all built, then picked)."""

    def __init__(self, data: DataConfig, split: str, length: int, k: int, tasks: List[str],
                 type_weights: Dict[str, float], seed: int = 0):
        self.data, self.split, self.length, self.k, self.tasks = data, split, length, k, tasks
        self.type_weights, self.seed = type_weights, seed
        self.rng = np.random.default_rng(seed)
        self._qas: Dict[int, List[QA]] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a track index, or ``(position, index)`` from :class:`must.resume.StepSampler`; with a
        position the question draw is seeded by it, so a resumed run asks exactly the same questions."""
        i, self.rng = read_key(key, self.seed, self.rng)
        # A clip with no question of the trained tasks (e.g. TSG only, a track where nothing enters
        # late) gives its place to the next one, so no step is ever empty.
        for j in range(i, i + self.length):
            track, qas = self._track_qas(j % self.length)
            if qas:
                break
        qas = pick_questions(qas, self.k, self.rng, self.type_weights)
        return {"id": track.id, "waveform": track.audio, "sample_rate": track.sample_rate, "qas": qas}

    def _track_qas(self, i: int) -> tuple:
        track = common.cached_track(self.data, self.split, i)
        if i not in self._qas:
            self._qas[i] = build_qas(track, track_seed(self.data.seed, self.split, i), self.split, self.tasks)
        return track, self._qas[i]


class RealQATracks(Dataset):
    """MusTBench tracks of one split of ``data.parquet`` and their questions, items as :class:`QATracks`'s.

    Audio is decoded when an item is read. A file that is missing or fails to load is skipped, counted
    and replaced by the next readable track (:class:`must.data.real.SkipBroken`); more than
    ``data.max_broken_fraction`` of the files failing stops training with the files named.
    ``k = 0`` keeps every question of a track (validation).
    """

    def __init__(self, data: DataConfig, split: str, k: int, tasks: List[str],
                 type_weights: Dict[str, float] | None = None, seed: int = 0):
        self.tracks, self.qas, self.audio_dir = common.mustbench_tracks(data, split, tasks)
        self.sample_rate, self.k, self.type_weights, self.seed = data.sample_rate, k, type_weights or {}, seed
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def broken(self) -> int:
        """Audio files skipped so far."""
        return len(self.tracks.failures)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, self.rng = read_key(key, self.seed, self.rng)
        item = self.tracks[i]
        qas = item["qas"] if self.k == 0 else pick_questions(item["qas"], self.k, self.rng, self.type_weights)
        return {"id": item["track_id"], "waveform": item["waveform"].numpy(), "sample_rate": self.sample_rate,
                "qas": qas, "boundaries": []}


class EvalTracks(Dataset):
    """Validation clips with the split's fixed questions."""

    def __init__(self, data: DataConfig, split: str, length: int):
        self.data, self.split, self.length = data, split, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        track = common.cached_track(self.data, self.split, i)
        return {"id": track.id, "waveform": track.audio, "sample_rate": track.sample_rate,
                "qas": synthetic_qas(self.data, track, self.split, i),
                "boundaries": [t.time for t in track.transitions]}


def _collate(items: list[dict]) -> dict:
    return {k: [it[k] for it in items] for k in items[0]}


def qa_losses(model: MusicLALM, encoding, groups: List[List[QA]]) -> torch.Tensor:
    """(Q,) answer-only loss of each question (flattened over clips), one packed sequence per clip."""
    packed = common.pack_questions(model, encoding, [[q.question for q in g] for g in groups],
                                   [[target(q.answer, q.trace, model.cfg.answer_format) for q in g] for g in groups])
    return common.block_losses(model.llm, packed, by_row=model.device.type == "cpu")


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
        self.cache = common.EncodingCache() if o.reuse_encodings and not self.encoder_trains else None

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
        return DataLoader(ds, batch_size=o.batch_size, sampler=sampler, collate_fn=_collate, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        if self.real:
            ds = RealQATracks(self.data, self.data.eval_split, 0, self.tasks)
        else:
            ds = EvalTracks(self.data, "val", self.data.val_tracks)
        return DataLoader(ds, batch_size=1, collate_fn=_collate)

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
        enc = self.model.encode_audio([batch["waveform"][0]], batch["sample_rate"][0], stochastic=False)
        answers = self.model.generate(enc.index_select([0] * len(qas)), [q.question for q in qas],
                                      max_new_tokens=self.options.eval_max_new_tokens)
        for q, a in zip(qas, answers):
            self._preds[q.id] = self.model.split_answer(a[0])[0]
            self._refs.append(q.to_row())
        seen = {r.task for r in self._table}
        for q, a in zip(qas, answers):
            if q.task not in seen and len(self._table) < 5:
                seen.add(q.task)
                self._table.append(rollout_row(q, [a[0]], audio=batch["waveform"][0],
                                               sample_rate=batch["sample_rate"][0], boundaries=batch["boundaries"][0]))

    def on_validation_epoch_end(self) -> None:
        from must.eval import score_predictions

        if self.stage_dir is not None:  # W&B table with audio and timelines, or files under <stage>/media/
            log_rollout_table(self.logger, self._table, self.global_step, self.stage_dir, key="val/rollouts")
        if not self._refs:
            return
        flat = common.summary(score_predictions(self._preds, self._refs))
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
        if self.real:
            return common.evaluate_parquet(self.model, self.data, Path(out_dir), name,
                                           self.options.eval_max_new_tokens, self.tasks)
        return common.evaluate_split(self.model, self.data, Path(out_dir), name=name,
                                     max_new_tokens=self.options.eval_max_new_tokens,
                                     max_tracks=self.options.eval_max_tracks)
