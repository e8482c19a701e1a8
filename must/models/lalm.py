"""``MusicLALM``: MusT encoder -> dynamic sampling -> projector + absolute-time embedding -> any HF causal LM
(optionally a host LALM whose own audio tokens sit before the MusT tokens). Saves and loads as one folder.

Folder layout written by :meth:`MusicLALM.save_pretrained`::

    must_config.json          {"format": "must-lalm", "version": 1, "model": <ModelConfig>}
    must.safetensors          encoder (backbone + heads), projector, time embedding (no LoRA weights)
    encoder_backbone/         config.json of an HF encoder backbone (absent for the built-in one)
    llm/                      the LLM (or host LALM) as a Hugging Face folder + its tokenizer
    adapters/llm/             PEFT LoRA adapter of the LLM (absent without LoRA or after merge)
    adapters/encoder/         PEFT LoRA adapter of the encoder backbone
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from must.data.traces import final_answer
from must.errors import ConfigError, MustError
from must.hub import resolve_model_config
from must.literals import check_choices
from must.models import params, time_pointer, time_tokens
from must.models.audio import resample, to_mono_float
from must.models.audio_tokens import frame_probs, sample_tokens
from must.models.config import ModelConfig
from must.models.encoder import EncoderFrames, MusTEncoder
from must.models.host import HOST_SAMPLE_RATE, audio_tower, host_audio_embeds
from must.models.llm import build_llm
from must.models.lora import add_lora, base_state_dict, load_adapter, merged_state_dict, save_adapter
from must.models.time_embedding import TimeEmbedding

FORMAT, VERSION = "must-lalm", 1
PROMPT_MEMO_SIZE = 65536  # rendered prompts kept per model (about 200 bytes each)


@dataclass
class AudioEncoding:
    """Encoded audio of a batch, reusable across prompts and sampled answers (e.g. GRPO's G answers)."""

    features: torch.Tensor
    """(B, T, D) pre-projector features of the kept tokens."""
    times: torch.Tensor
    """(B, T) token times, seconds from the track start."""
    mask: torch.Tensor
    """(B, T) bool, True for real tokens."""
    covered_seconds: torch.Tensor
    """(B,) seconds of the track the tokens stand for (the whole track, or the guard has raised)."""
    durations: torch.Tensor
    """(B,) track lengths, seconds."""
    transition_probs: torch.Tensor
    """(B, F) transition probability per encoder frame."""
    frame_times: torch.Tensor
    """(B, F) encoder frame times, seconds."""
    frame_mask: torch.Tensor
    """(B, F) bool, real frames."""
    host_embeds: torch.Tensor | None = None
    """(B, Th, H) host audio tokens (already at the LLM width), or None."""
    host_mask: torch.Tensor | None = None
    """(B, Th) bool, or None."""
    encoder_calls: int = 0
    """Backbone forward calls made to build this encoding."""

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    def index_select(self, idx) -> AudioEncoding:
        """Rows ``idx`` (e.g. one clip repeated for several questions) without re-encoding."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.features.device)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor) else v
        return AudioEncoding(**out)

    def to(self, device) -> AudioEncoding:
        """A copy with every tensor on ``device`` (e.g. cache on CPU, use on GPU)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )

    def detach(self) -> AudioEncoding:
        """A copy cut from the autograd graph (cache the encoder, train the projector)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).detach()
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


def _as_config(cfg) -> ModelConfig:
    """A ``ModelConfig`` from a ModelConfig, an OmegaConf node or a plain dict (validated)."""
    if isinstance(cfg, ModelConfig):
        return cfg
    values = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    check_choices(ModelConfig, values or {}, "model")  # before omegaconf's merge: the same message on every version
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg if cfg is not None else {})
    except Exception as exc:
        raise MustError(f"invalid model config: {exc}") from exc
    return OmegaConf.to_object(merged)


def check_config(cfg: ModelConfig) -> None:
    """Reject values the types allow but the model does not, naming the recipe key (``ConfigError``)."""
    check_choices(ModelConfig, cfg, "model")  # every Literal field (a ModelConfig built in Python is not checked)
    ranges = {
        "model.sampling.uniform_floor": (cfg.sampling.uniform_floor, 0.0, 1.0),
        "model.sampling.tokens_per_second": (cfg.sampling.tokens_per_second, 1e-6, float("inf")),
        "model.sampling.max_tokens": (cfg.sampling.max_tokens, 1, float("inf")),
        "model.encoder.window_seconds": (
            cfg.encoder.window_seconds,
            cfg.encoder.overlap_seconds + 1e-6,
            float("inf"),
        ),
        "model.encoder.frame_pool": (cfg.encoder.frame_pool, 1, float("inf")),
        "model.time_embedding.resolution": (cfg.time_embedding.resolution, 1e-3, float("inf")),
        "model.time_embedding.max_seconds": (cfg.time_embedding.max_seconds, 1.0, 36000.0),
        "model.time_embedding.read_seconds": (cfg.time_embedding.read_seconds, 1e-3, float("inf")),
        "model.time_embedding.pointer_window": (cfg.time_embedding.pointer_window, 0.0, float("inf")),
    }
    for key, (value, lo, hi) in ranges.items():
        if not lo <= value <= hi:
            raise ConfigError(f"{key} = {value} is out of range [{lo}, {hi}]")
    if cfg.sampling.min_tokens > cfg.sampling.max_tokens:
        raise ConfigError("model.sampling.min_tokens must not exceed model.sampling.max_tokens")
    if cfg.encoder.head_features and cfg.encoder.num_sources < 1:
        raise ConfigError("model.encoder.head_features appends the source head's outputs: set model.encoder.num_sources")
    if cfg.time_embedding.pointer and cfg.time_embedding.kind != "tokens":
        raise ConfigError("model.time_embedding.pointer points time tokens into the audio: set model.time_embedding.kind: tokens")
    for key in ("pointer_context", "pointer_prompt", "pointer_options", "pointer_window", "read_labels"):
        if getattr(cfg.time_embedding, key) and not cfg.time_embedding.pointer:
            raise ConfigError(f"model.time_embedding.{key} shapes the time pointer: set model.time_embedding.pointer: true")
    if cfg.time_embedding.read_prompt and cfg.time_embedding.kind != "tokens":
        raise ConfigError("model.time_embedding.read_prompt reads the audio at a prompt's time tokens: set "
                          "model.time_embedding.kind: tokens")


class MusicLALM(nn.Module):
    """The audio-language model. Parameter names: ``encoder.*``, ``projector.*``, ``time_embedding.*``, ``llm.*``."""

    def __init__(self, cfg: ModelConfig, encoder: MusTEncoder, llm: nn.Module, tokenizer):
        super().__init__()
        self.cfg, self.encoder, self.llm, self.tokenizer = cfg, encoder, llm, tokenizer
        if cfg.time_embedding.kind == "tokens":  # a fresh LLM gets them; a saved one has them already
            time_tokens.add_to(llm, tokenizer, cfg.time_embedding.resolution, cfg.time_embedding.max_seconds)
        hidden = llm.get_input_embeddings().embedding_dim
        d = encoder.hidden_size + (cfg.encoder.num_sources + 1 if cfg.encoder.head_features else 0)
        layers = [nn.Linear(d, hidden)]
        if cfg.projector_layers >= 2:
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.projector = nn.Sequential(*layers)
        self.time_embedding = TimeEmbedding(cfg.time_embedding, hidden, tokenizer)
        self.hidden_size = hidden
        if cfg.time_embedding.kind == "tokens":  # not saved: re-tied on every build and load
            self._tie_handle = time_tokens.tie_head(llm, self.time_embedding.first, self.time_embedding.count)
        if self.pointer is not None:  # after the tie hook: the pointer adds to the tied logits
            self._pointer_handles = time_pointer.attach(self.pointer, llm)
        self._prompt_memo: dict[tuple, tuple[str, str]] = {}  # see prompt_parts

    @property
    def pointer(self) -> time_pointer.TimePointer | None:
        """The time pointer (``time_embedding.pointer``), or None."""
        return getattr(self.time_embedding, "pointer", None)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: ModelConfig | dict | None = None) -> MusicLALM:
        """Build from the recipe's ``model`` block (tiny presets from config, LLM folders with their weights)."""
        cfg = _as_config(cfg)
        check_config(cfg)
        local = resolve_model_config(cfg)  # Hub ids -> their cached snapshots; cfg keeps the ids for saving
        llm, tok = build_llm(local.llm, local.host)
        model = cls(cfg, MusTEncoder(local.encoder), llm, tok)
        model._add_adapters()
        return model

    def _add_adapters(self) -> None:
        if self.cfg.encoder.lora.r > 0:
            add_lora(self.encoder.backbone, self.cfg.encoder.lora)
        if self.cfg.llm.lora.r > 0:
            add_lora(self.llm, self.cfg.llm.lora)
        if self.cfg.host.kind != "none":
            audio_tower(self.llm).requires_grad_(False)  # the host tower is always frozen (as in MusT)

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    # --- audio -------------------------------------------------------------------------------

    def encode_audio(
        self,
        waveforms,
        sample_rate: int,
        stochastic: bool | None = None,
        generator: np.random.Generator | None = None,
    ) -> AudioEncoding:
        """Encode whole tracks: list of 1-D waveforms (samples,) at ``sample_rate`` Hz -> :class:`AudioEncoding`.

        Sampling is stochastic in training (``self.training``) and deterministic in eval unless
        ``stochastic`` says otherwise. Raises ``MustError`` if the tokens do not cover a track.
        """
        stochastic = self.training if stochastic is None else stochastic
        if isinstance(waveforms, (torch.Tensor, np.ndarray)) and waveforms.ndim == 1:
            waveforms = [waveforms]
        waves = [to_mono_float(w) for w in waveforms]
        frames = self.encoder.encode_frames(waves, sample_rate)
        if self.cfg.encoder.head_features:
            frames = with_head_features(frames)
        features, times, mask, covered = sample_tokens(frames, self.cfg.sampling, stochastic, generator)
        _guard_coverage(covered, frames.durations.tolist(), frames.frame_rate)
        host_embeds = host_mask = None
        if self.cfg.host.kind != "none" and self.cfg.host.use_audio_tower:
            sr16 = [resample(w, sample_rate, HOST_SAMPLE_RATE) for w in waves]
            host_embeds, host_mask = host_audio_embeds(
                self.llm, self.cfg.host.kind, sr16, self.cfg.host.window_seconds
            )
        return AudioEncoding(
            features=features,
            times=times,
            mask=mask,
            covered_seconds=torch.tensor(covered),
            durations=frames.durations.cpu(),
            transition_probs=frame_probs(frames),
            frame_times=frames.times,
            frame_mask=frames.mask,
            host_embeds=host_embeds,
            host_mask=host_mask,
            encoder_calls=frames.encoder_calls,
        )

    def project(self, encoding: AudioEncoding) -> torch.Tensor:
        """MusT tokens at the LLM width: projector(features) + time embedding(times), (B, T, H).

        Differentiable w.r.t. the projector (and time embedding) even for a cached, detached encoding.
        """
        x = self.projector(encoding.features.to(self.device))
        t = self.time_embedding(encoding.times.to(self.device), self.llm.get_input_embeddings())
        return x if t is None else x + t.to(x.dtype)

    # --- prompts -----------------------------------------------------------------------------

    def prompt_parts(self, question: str) -> tuple[str, str]:
        """The chat-templated prompt text before and after the music tokens (ends with the assistant header).

        Rendered once per question text and kept (a training step asks up to a few dozen questions, and
        every epoch asks them again); the key holds everything else the text depends on.
        """
        tok = self.tokenizer
        key = (question, self.cfg.question_position, self.cfg.system_prompt, self.cfg.music_placeholder,
               tok.chat_template, id(tok), len(tok))
        parts = self._prompt_memo.get(key)
        if parts is None:
            parts = self._prompt_memo[key] = self._prompt_text(question)
            if len(self._prompt_memo) > PROMPT_MEMO_SIZE:
                self._prompt_memo.pop(next(iter(self._prompt_memo)))  # the oldest
        return parts

    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added."""
        return self._ids(text)

    def _prompt_text(self, question: str) -> tuple[str, str]:
        ph = self.cfg.music_placeholder
        audio = f"<|audio_bos|>{ph}<|audio_eos|>" if self._has_audio_tags() else ph
        content = {
            "after": f"{audio}\n{question}",
            "before": f"{question}\n{audio}",
            "both": f"{question}\n{audio}\n{question}",
        }[self.cfg.question_position]
        messages = [{"role": "user", "content": content}]
        if self.cfg.system_prompt:
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(ph) != 1:
            raise MustError(f"the chat template must keep exactly one music placeholder {ph!r}; got {text!r}")
        before, after = text.split(ph)
        return before, after

    def _has_audio_tags(self) -> bool:
        """Whether the vocabulary has ``<|audio_bos|>`` and ``<|audio_eos|>`` (asked once per tokenizer:
        ``get_vocab`` builds the whole vocabulary dict, 0.7 ms for the tiny one)."""
        key = (id(self.tokenizer), len(self.tokenizer))
        if getattr(self, "_audio_tags", (None,))[0] != key:
            vocab = self.tokenizer.get_vocab()
            self._audio_tags = (key, "<|audio_bos|>" in vocab and "<|audio_eos|>" in vocab)
        return self._audio_tags[1]

    def spelled(self, text: str) -> str:
        """``text`` as the tokenizer sees it: with time tokens every ``M:SS`` of a prompt, caption or answer
        becomes its time token."""
        te = self.cfg.time_embedding
        return time_tokens.to_tokens(text, te.resolution, self.time_embedding.count) if te.kind == "tokens" else text

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(self.spelled(text), add_special_tokens=False).input_ids

    def decode(self, ids) -> list[str]:
        """Generated ids (a list of id lists or a (B, N) tensor) as MusTBench text: special tokens
        dropped, time tokens rendered ``M:SS``, whitespace stripped."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if self.cfg.time_embedding.kind == "tokens":
            texts = [time_tokens.to_text(t, self.cfg.time_embedding.resolution) for t in texts]
        return [t.strip() for t in texts]

    def prompt_inputs(
        self,
        encoding: AudioEncoding,
        questions: list[str],
        answers: list[str] | None = None,
        padding_side: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs: ``inputs_embeds`` (B, L, H), ``attention_mask`` (B, L), ``labels`` (B, L),
        ``position_ids`` (B, L); pass them all to ``self.llm(**inputs)``.

        Each row is ``[chat prefix][host audio tokens][MusT tokens][rest of the user turn][answer + EOS]``
        (the question sits before and/or after the music tokens, per ``cfg.question_position``);
        labels are -100 everywhere but the answer tokens and EOS. Without ``answers`` the rows end with
        the assistant header (a generation prompt) and are left-padded; with answers right-padded.
        """
        if len(questions) != encoding.batch_size:
            raise ValueError(f"{len(questions)} questions for {encoding.batch_size} encoded tracks")
        from must.models.prompts import pack_questions

        # The packed layout with one question per row is exactly this row; its causal mask is the 2-D one.
        left = (padding_side or ("left" if answers is None else "right")) == "left"
        packed = pack_questions(self, encoding, [[q] for q in questions],
                                None if answers is None else [[a] for a in answers], block_masks=False,
                                point=not left)  # left-padded rows move: the pointer is told where, below
        dtype = self.llm.get_input_embeddings().weight.dtype  # the LLM's (the projector may stay float32)
        inputs, labels, lengths = packed["inputs_embeds"].to(dtype), packed["labels"], packed["lengths"]
        length = labels.shape[1]
        attn = (torch.arange(length, device=self.device)[None] < lengths[:, None]).long()
        if left:
            # Right-aligned: row i rolled by its padding (the real tokens end where generation starts).
            shift = (length - lengths)[:, None]
            idx = (torch.arange(length, device=self.device)[None] - shift) % length
            inputs = inputs.gather(1, idx[..., None].expand(-1, -1, inputs.shape[-1]))
            labels, attn = labels.gather(1, idx), attn.gather(1, idx)
            if self.pointer is not None:  # the audio moved with its row
                self.point_at(encoding, packed["audio_start"] + (length - lengths), packed["clip"],
                              packed["time_marks"], (length - lengths).tolist())
        # Explicit positions (as HF generation computes them) so left padding is right and no model
        # state (e.g. the Omni thinker's cached rope deltas) leaks between calls.
        positions = (attn.cumsum(-1) - 1).clamp_min(0)
        return {"inputs_embeds": inputs, "attention_mask": attn, "labels": labels, "position_ids": positions}

    def point_at(self, encoding: AudioEncoding, starts: torch.Tensor, clips: torch.Tensor,
                 marks: list[list[tuple[int, int, int]]] | None = None, shifts: list[int] | None = None,
                 query_blocks: torch.Tensor | None = None) -> None:
        """Tell the time pointer where the next LLM calls' keys are: in sequence row ``r`` the MusT tokens of
        clip ``clips[r]`` (``encoding.mask[clips[r]]``) start at position ``starts[r]``; with
        ``time_embedding.pointer_prompt`` / ``pointer_options``, ``marks[r]`` lists the row's prompt time tokens and
        option-line ends as (position, slot, block) (:func:`~must.models.prompts.pack_questions`), moved ``shifts[r]`` on; ``query_blocks`` (B, L)
        the packed call's block per position (each block then sees only its own prompt's time keys)."""
        mask = encoding.mask.to(self.device)[clips]
        times = encoding.times.to(self.device)[clips]
        n = mask.sum(-1).tolist()
        te = self.time_embedding
        marks = marks if marks is not None else [[] for _ in n]  # pack_questions lists only the enabled keys
        shifts = shifts or [0] * len(n)
        width = max(k + len(m) for k, m in zip(n, marks))
        positions = torch.full((len(n), width), -1, dtype=torch.long, device=self.device)
        steps, blocks = torch.full_like(positions, -1), torch.full_like(positions, -1)
        audio = torch.zeros_like(positions, dtype=torch.bool)
        for r, (k, row_marks) in enumerate(zip(n, marks)):
            positions[r, :k] = int(starts[r]) + torch.arange(k, device=self.device)
            steps[r, :k] = time_tokens.steps(times[r][mask[r]], te.cfg.resolution, te.count)
            audio[r, :k] = True
            if row_marks:  # after the audio tokens: the prompt's own time tokens
                at = torch.tensor(row_marks, dtype=torch.long, device=self.device)
                positions[r, k : k + len(at)] = at[:, 0] + shifts[r]
                steps[r, k : k + len(at)], blocks[r, k : k + len(at)] = at[:, 1], at[:, 2]
        self.pointer.set_rows(positions, steps, audio, blocks, query_blocks)

    def prompt_embeds(self, encoding: AudioEncoding, questions: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded generation prompts: ``inputs_embeds`` (B, L, H) and ``attention_mask`` (B, L)."""
        out = self.prompt_inputs(encoding, questions, None, padding_side="left")
        return {"inputs_embeds": out["inputs_embeds"], "attention_mask": out["attention_mask"]}

    # --- training and generation -------------------------------------------------------------

    def forward(self, encoding: AudioEncoding, questions: list[str], answers: list[str]):
        """Answer-only language-model loss; returns the HF output (``.loss`` scalar, ``.logits`` (B, L, V))."""
        inputs = self.prompt_inputs(encoding, questions, answers)
        return self.llm(**inputs, use_cache=False)

    @torch.no_grad()
    def generate_ids(
        self,
        audio,
        questions: list[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """New token ids, (B * num_return_sequences, N), rows of one prompt adjacent; audio encoded once."""
        encoding = self._as_encoding(audio, sample_rate)
        prompt = self.prompt_embeds(encoding, questions)
        kwargs = dict(do_sample=do_sample, num_return_sequences=num_return_sequences)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return self.llm.generate(
            **prompt,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos_ids(),
            **kwargs,
        )

    def _eos_ids(self) -> list[int]:
        """The tokenizer's EOS plus any the model's generation config lists (e.g. ``<|endoftext|>``)."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.llm, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
        return sorted(i for i in ids if i is not None)

    def generate(
        self,
        audio,
        questions: list[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        sample_rate: int | None = None,
    ) -> list[list[str]]:
        """Answers as text: one list of ``num_return_sequences`` strings per question.

        ``audio``: an :class:`AudioEncoding` (reused as is) or a list of 1-D waveforms at ``sample_rate`` Hz
        (default: the encoder's rate, ``model.encoder.sample_rate``).
        """
        ids = self.generate_ids(
            audio, questions, max_new_tokens, do_sample, temperature, top_p, num_return_sequences, sample_rate
        )
        texts = self.decode(ids)
        n = num_return_sequences
        return [texts[i * n : (i + 1) * n] for i in range(len(questions))]

    def split_answer(self, text: str) -> tuple[str, str | None, str | None]:
        """(answer, trace, reason) of a generated text: with ``answer_format: grounded`` the answer is
        what follows the trace's last ``→`` (``""`` and a reason when there is none) and the trace is
        the whole text; with ``plain`` the text is the answer and there is no trace."""
        if self.cfg.answer_format != "grounded":
            return text, None, None
        answer, reason = final_answer(text)
        return answer, text, reason

    def _as_encoding(self, audio, sample_rate: int | None) -> AudioEncoding:
        if isinstance(audio, AudioEncoding):
            return audio
        # Waveforms without a rate are taken to be at the encoder's own rate (16 kHz by default).
        rate = self.cfg.encoder.sample_rate if sample_rate is None else sample_rate
        return self.encode_audio(audio, rate, stochastic=False)

    # --- freezing ----------------------------------------------------------------------------

    def freeze(self, patterns) -> int:
        """Freeze parameters whose names match any glob in ``patterns``; returns how many."""
        return params.freeze(self, patterns)

    def trainable(self, patterns) -> int:
        """Train exactly the parameters matching ``patterns`` (all others frozen); returns how many."""
        return params.trainable(self, patterns)

    def param_groups(self, lrs: dict[str, float], default_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups of trainable parameters, learning rate by first matching glob of ``lrs``."""
        return params.param_groups(self, lrs, default_lr, weight_decay)

    # --- save / load -------------------------------------------------------------------------

    def _own_state(self, merge: bool) -> dict[str, torch.Tensor]:
        backbone = (
            merged_state_dict(self.encoder.backbone) if merge else base_state_dict(self.encoder.backbone)
        )
        state = {f"encoder.backbone.{k}": v for k, v in backbone.items()}
        for name in ("encoder", "projector", "time_embedding"):
            for k, v in getattr(self, name).state_dict().items():
                full = f"{name}.{k}"
                if not full.startswith("encoder.backbone."):
                    state[full] = v
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save_pretrained(self, folder: str | Path, merge_lora: bool = False) -> Path:
        """Write the one-folder model (layout in the module docstring). ``merge_lora`` folds adapters
        into the base weights for export (the saved config then has ``lora.r = 0``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = OmegaConf.structured(self.cfg)
        if merge_lora:
            cfg.encoder.lora.r = 0
            cfg.llm.lora.r = 0
        save_file(self._own_state(merge_lora), str(folder / "must.safetensors"))
        backbone = self.encoder.backbone
        if hasattr(backbone, "model"):
            backbone.model.config.save_pretrained(str(folder / "encoder_backbone"))
        llm_dir = folder / "llm"
        llm_state = merged_state_dict(self.llm) if merge_lora else base_state_dict(self.llm)
        self.llm.save_pretrained(str(llm_dir), state_dict=llm_state)
        self.tokenizer.save_pretrained(str(llm_dir))
        shutil.rmtree(folder / "adapters", ignore_errors=True)
        if not merge_lora:
            if self.cfg.llm.lora.r > 0:
                save_adapter(self.llm, folder / "adapters" / "llm", self.cfg.llm.lora, "llm")
            if self.cfg.encoder.lora.r > 0:
                save_adapter(backbone, folder / "adapters" / "encoder", self.cfg.encoder.lora)
        meta = {"format": FORMAT, "version": VERSION, "model": OmegaConf.to_container(cfg)}
        (folder / "must_config.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, trust_remote_code: bool | Collection[str] = False) -> MusicLALM:
        """Load a folder written by :meth:`save_pretrained`; a missing or wrong folder raises ``MustError``.

        ``trust_remote_code`` is the caller's, never the folder's: ``True`` lets every part run the modelling
        code shipped with it, a collection names the parts that may (``"encoder"``, ``"llm"``). A folder whose
        ``must_config.json`` asks for remote code it was not granted is refused (``MustError``), since a
        downloaded folder could otherwise run any file beside it.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise MustError(f"model folder not found: {folder}")
        meta_file = folder / "must_config.json"
        if not meta_file.exists():
            raise MustError(
                f"{folder} is not a must model folder (no must_config.json); "
                "write one with MusicLALM.save_pretrained or a recipe stage"
            )
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise MustError(f"{meta_file} is not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise MustError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
        for need in ("must.safetensors", "llm"):
            if not (folder / need).exists():
                raise MustError(f"model folder {folder} is incomplete: {need} is missing")
        cfg = _as_config(meta["model"])
        _grant_remote_code(cfg, meta_file, trust_remote_code)
        if (folder / "encoder_backbone").is_dir():
            cfg.encoder.backbone = str(folder / "encoder_backbone")
            encoder = _encoder_from_config_folder(cfg, folder / "encoder_backbone")
        else:
            encoder = MusTEncoder(cfg.encoder)
        llm, tok = build_llm(cfg.llm, cfg.host, folder=folder / "llm")
        model = cls(cfg, encoder, llm, tok)
        model._add_adapters()
        state = load_file(str(folder / "must.safetensors"))
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.") and "lora_" not in k}
        renamed = {k.replace(".base_layer.", "."): k for k in own}
        missing = sorted(set(renamed) - set(state))
        if missing:
            raise MustError(f"{folder / 'must.safetensors'} does not fit the config: missing {missing[:3]}")
        model.load_state_dict({renamed[k]: v for k, v in state.items() if k in renamed}, strict=False)
        if cfg.llm.lora.r > 0:
            load_adapter(model.llm, folder / "adapters" / "llm")
        if cfg.encoder.lora.r > 0:
            load_adapter(model.encoder.backbone, folder / "adapters" / "encoder")
        return model


#: The parts of a model folder that may hold their own modelling code, and the recipe key that allows it.
REMOTE_CODE_PARTS = {"encoder": "model.encoder.trust_remote_code", "llm": "model.llm.trust_remote_code"}


def _grant_remote_code(cfg: ModelConfig, meta_file: Path, granted: bool | Collection[str]) -> None:
    """Set each part's ``trust_remote_code`` to what the caller granted; refuse a folder asking for more."""
    allowed = set(REMOTE_CODE_PARTS) if granted is True else set(granted or ())
    for part, key in REMOTE_CODE_PARTS.items():
        part_cfg = getattr(cfg, part)
        if part_cfg.trust_remote_code and part not in allowed:
            raise MustError(
                f"{meta_file} asks to run the modelling code shipped with the folder ({key}: true); refused, "
                "since remote code runs only when you ask for it. If you trust this folder, pass "
                "--trust-remote-code (must eval), set it in your recipe (a stage's init_from) or call "
                "MusicLALM.from_pretrained(..., trust_remote_code=True)"
            )
        # Only a part that asks gets it: granting one part never widens another.
        part_cfg.trust_remote_code = bool(part_cfg.trust_remote_code and part in allowed)


def _encoder_from_config_folder(cfg: ModelConfig, cfg_folder: Path) -> MusTEncoder:
    """An HF-backbone encoder with the architecture saved in ``cfg_folder`` (weights are loaded after)."""
    from transformers import AutoConfig, AutoModel

    from must.models.encoder import wrap_hf_backbone

    remote = cfg.encoder.trust_remote_code
    model = AutoModel.from_config(AutoConfig.from_pretrained(str(cfg_folder), trust_remote_code=remote),
                                  trust_remote_code=remote)
    return MusTEncoder(cfg.encoder, backbone=wrap_hf_backbone(model, cfg.encoder))


def with_head_features(frames: EncoderFrames) -> EncoderFrames:
    """``frames`` with (B, F, D) features widened to (B, F, D + S + 1): the S source-activity and the
    transition probabilities appended (``model.encoder.head_features``)."""
    probs = [torch.sigmoid(frames.source_logits), torch.sigmoid(frames.transition_logits)[..., None]]
    return replace(frames, features=torch.cat([frames.features, *probs], -1))


def _guard_coverage(covered: list[float], durations: list[float], frame_rate: float) -> None:
    """Fail loudly when tokens do not stand for the whole track (no silent truncation)."""
    tol = 1.0 / frame_rate + 0.05
    for i, (c, d) in enumerate(zip(covered, durations)):
        if c < d - tol:
            raise MustError(
                f"audio tokens cover only {c:.2f} s of a {d:.2f} s track (item {i}): "
                "the encoder must see the whole track"
            )
