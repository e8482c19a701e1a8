"""Stage 2: LM adaptation — align the MusT tokens with the language model on timestamped captions.

The encoder (adapted in stage 1) is frozen; the projector, the time embedding and the LLM train (the
whole LLM by default, as in the paper; or only its LoRA, per recipe). Each track's caption
``[0:00-0:25] description … [0:25] boundary …`` is the answer to a caption prompt, and the loss is the
next-token loss on the caption only (normalised per caption). With the encoder frozen, each track's
encoded audio is computed once and reused across epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import lightning as L
import torch
from torch.utils.data import DataLoader

from must.data.config import DataConfig
from must.data.datasets import CaptionTracks, collate
from must.models.lalm import MusicLALM
from must.resume import step_sampler
from must.stages import common
from must.stages.options.lm_adapt import CAPTION_PROMPTS, Options  # noqa: F401 (CAPTION_PROMPTS: re-exported)


def caption_loss(model: MusicLALM, encoding, prompts: List[str], captions: List[str],
                 max_tokens: int | None = None) -> torch.Tensor:
    """(B,) next-token loss of each caption given its audio and prompt, normalised per caption."""
    packed = common.pack_questions(model, encoding, [[p] for p in prompts], [[c] for c in captions], max_tokens)
    # As SFT: on a CPU one call per row at its own length, and the LM head on the caption positions only
    # (benchmarks/results/step_overhead.md: the padded all-positions call made this step 3.3x the bare LLM).
    return common.block_losses(model.llm, packed, by_row=model.device.type == "cpu", pointer=model.pointer)


def train_globs(model: MusicLALM, options: Options) -> tuple[list[str], list[str]]:
    """What stage 2 trains, as (train, freeze) parameter globs: ``options.train``, or by default projector, time
    embedding and the whole LLM with its LoRA adapters (if any) left for stage 3. Pure; the stage and ``must plan``
    call it."""
    if options.train is not None:
        return list(options.train), list(options.freeze)
    lora = any("lora_" in n for n, _ in model.named_parameters())
    return ["projector.*", "time_embedding.*", "llm.*"], list(options.freeze) + (["*lora_*"] if lora else [])


class LMAdaptation(L.LightningModule):
    """Stage 2 (see the module docstring)."""

    Options = Options

    def __init__(self, model: MusicLALM, data: DataConfig, options: Options | None = None, seed: int = 0,
                 stage_dir: Path | None = None):
        super().__init__()
        self.model, self.data, self.seed, self.stage_dir = model, data, seed, stage_dir
        self.options = o = options or Options()
        common.set_trainable(model, *train_globs(model, o))
        self.encoder_trains = any(p.requires_grad for p in model.encoder.parameters())
        reuse = o.reuse_encodings and not self.encoder_trains  # frozen encoder: each track encoded once
        self.cache = common.EncodingCache(data.encoding_cache_bytes) if reuse else None
        self.max_tokens = o.max_caption_tokens

    train_globs = staticmethod(train_globs)

    @classmethod
    def from_context(cls, ctx) -> LMAdaptation:
        common.check_synthetic(ctx.recipe.data, ctx.stage.name)
        return cls(common.build_model(ctx), ctx.recipe.data, ctx.options, ctx.seed, ctx.stage_dir)

    def train_dataloader(self) -> DataLoader:
        ds = CaptionTracks(self.data, "train", self.data.train_tracks, self.options.prompts, self.seed,
                           self.model.cfg.answer_format)
        # Rank-sharded and resumable order (see must.resume.StepSampler).
        sampler = step_sampler(self, len(ds), self.options.batch_size, self.seed, positions=True)
        return DataLoader(ds, batch_size=self.options.batch_size, sampler=sampler, collate_fn=collate, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        ds = CaptionTracks(self.data, "val", self.data.val_tracks, self.options.prompts[:1], self.seed,
                           self.model.cfg.answer_format)
        return DataLoader(ds, batch_size=self.options.batch_size, collate_fn=collate)

    def _encode(self, batch: dict):
        if self.cache is not None:
            return self.cache.get(self.model, batch["id"], batch["waveform"], batch["sample_rate"][0])
        return self.model.encode_audio(batch["waveform"], batch["sample_rate"][0])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.cache is not None:
            self.model.encoder.eval()  # frozen: no dropout, deterministic tokens
        losses = caption_loss(self.model, self._encode(batch), batch["prompt"], batch["caption"], self.max_tokens)
        loss = losses.mean()
        bs = len(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/caption_loss", loss, batch_size=bs)
        return loss

    def on_train_start(self) -> None:
        # Frozen all-zero LoRA adapters (left for stage 3) add exactly 0.0: off for the fit, as in SFT.
        self._inert_lora = common.disable_inert_lora(self.model.llm)

    def on_train_end(self) -> None:
        common.enable_lora(getattr(self, "_inert_lora", []))
        self._inert_lora = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        losses = caption_loss(self.model, self._encode(batch), batch["prompt"], batch["caption"], self.max_tokens)
        self.log("val/caption_loss", losses.mean(), prog_bar=True, batch_size=len(losses))

    def configure_optimizers(self):
        return common.optimizer_config(self.model, self.options, common.total_steps(self.trainer))

    def evaluate(self, out_dir: Path, name: str) -> dict:
        """The model's MusTBench scores on the synthetic test split, into ``out_dir``."""
        return common.evaluate(self.model, self.data, Path(out_dir), name, self.options.eval_max_new_tokens,
                               self.options.eval_max_tracks)

    def save_model(self, path: Path) -> None:
        """The whole MusicLALM folder (the next stage starts from it)."""
        self.model.save_pretrained(path)


