"""Stock Hugging Face audio LLMs in ``must eval``: Qwen2-Audio and the Qwen2.5-Omni thinker, through their own
processor and chat template, answered, parsed and scored exactly as a must model is.

A folder is *stock* when its ``config.json`` names one of :data:`STOCK_CLASSES` and it has no
``must_config.json``. :class:`StockAudioLLM` gives such a model the three methods
:func:`must.eval.predict` calls on a :class:`~must.models.lalm.MusicLALM` (``encode_audio``, ``generate``,
``split_answer``), so the predictions, scores, report and plots come from the one evaluation path.

The whole track is heard: the processor's feature extractor takes at most ``chunk_length`` seconds
(30 s for both families), so a longer track goes in as consecutive windows, one audio item each, in
order, in the user turn before the question (as Qwen2-Audio's chat template numbers them, "Audio 1:", …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from must.errors import MustError

#: ``model_type`` of a stock folder -> the transformers class that answers (Omni: its thinker, the text half).
STOCK_CLASSES = {
    "qwen2_audio": "Qwen2AudioForConditionalGeneration",
    "qwen2_5_omni_thinker": "Qwen2_5OmniThinkerForConditionalGeneration",
    "qwen2_5_omni": "Qwen2_5OmniThinkerForConditionalGeneration",
}


def stock_kind(folder: str | Path) -> str | None:
    """The ``model_type`` of a stock audio-LLM folder, None for a must model folder or anything else."""
    folder = Path(folder)
    if (folder / "must_config.json").exists() or not (folder / "config.json").is_file():
        return None
    try:
        kind = json.loads((folder / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        return None
    return kind if kind in STOCK_CLASSES else None


@dataclass
class StockAudio:
    """A batch of tracks as the stock model hears them: waveform windows, no encoding of our own."""

    windows: list[list[np.ndarray]]
    """Per track, its consecutive windows (mono, the processor's sample rate), together the whole track."""
    durations: torch.Tensor
    """(B,) track lengths, seconds."""
    covered_seconds: torch.Tensor
    """(B,) seconds the windows hold (the whole track)."""
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.windows)

    def index_select(self, idx) -> StockAudio:
        idx = [int(i) for i in idx]
        return StockAudio([self.windows[i] for i in idx], self.durations[idx], self.covered_seconds[idx])


class StockAudioLLM:
    """A stock audio LLM and its processor behind the interface :func:`must.eval.predict` uses."""

    def __init__(self, model, processor, kind: str):
        self.model, self.processor, self.kind = model, processor, kind
        fe = processor.feature_extractor
        self.sample_rate = int(fe.sampling_rate)
        self.window_seconds = float(fe.n_samples) / self.sample_rate  # what one audio item may hold
        self.cfg = SimpleNamespace(encoder=SimpleNamespace(sample_rate=self.sample_rate))  # predict reads this
        processor.tokenizer.padding_side = "left"  # batched generation prompts end where the answers begin

    # --- the Module-like bits evaluate_loaded touches
    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self) -> StockAudioLLM:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> StockAudioLLM:
        self.model.train(mode)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- audio and prompts
    def encode_audio(self, waveforms, sample_rate: int, stochastic: bool = False, generator=None) -> StockAudio:
        """Whole tracks (1-D waveforms at ``sample_rate`` Hz) cut into the processor's windows."""
        from must.models.audio import resample, to_mono_float

        win = int(round(self.window_seconds * self.sample_rate))
        windows, durations = [], []
        for w in waveforms:
            wave = resample(to_mono_float(w), sample_rate, self.sample_rate)
            windows.append([wave[lo : lo + win] for lo in range(0, max(len(wave), 1), win)])
            durations.append(len(wave) / self.sample_rate)
        seconds = torch.tensor(durations, dtype=torch.float32)
        return StockAudio(windows, seconds, torch.tensor([sum(map(len, ws)) / self.sample_rate for ws in windows]))

    def prompt(self, n_windows: int, question: str) -> str:
        """The chat-templated generation prompt: ``n_windows`` audio items, then the question."""
        content = [{"type": "audio", "audio": f"window {i}"} for i in range(n_windows)]
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inputs(self, audio: StockAudio, questions: list[str]) -> dict:
        """Processor outputs (``input_ids``, ``attention_mask``, ``input_features``, ``feature_attention_mask``)."""
        if len(questions) != audio.batch_size:
            raise ValueError(f"{len(questions)} questions for {audio.batch_size} tracks")
        texts = [self.prompt(len(ws), q) for ws, q in zip(audio.windows, questions, strict=True)]
        flat = [w for ws in audio.windows for w in ws]
        return self.processor(text=texts, audio=flat, sampling_rate=self.sample_rate, return_tensors="pt",
                              padding=True)

    @torch.no_grad()
    def generate(self, audio: StockAudio, questions: list[str], max_new_tokens: int = 32, **_) -> list[list[str]]:
        """Greedy answers, one list of one string per question."""
        batch = self.inputs(audio, questions).to(self.device)
        if "input_features" in batch:
            batch["input_features"] = batch["input_features"].to(self.model.dtype)
        tok = self.processor.tokenizer
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                  top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1] :]
        return [[t.strip()] for t in tok.batch_decode(new, skip_special_tokens=True)]

    def split_answer(self, text: str) -> tuple[str, None, None]:
        """A stock model's whole reply is its answer (the parser finds the time, letter or interval in it)."""
        return text, None, None


class AudioOnlyProcessor:
    """The audio half of a Qwen audio processor, from the folder's own feature extractor, tokenizer and chat
    template: each audio placeholder token becomes as many audio tokens as the tower makes of its window.

    Used only when the folder's processor class cannot be built here: in transformers 5.x
    ``Qwen2_5OmniProcessor`` always needs its video processor, which needs torchvision."""

    def __init__(self, feature_extractor, tokenizer, audio_token: str = "<|AUDIO|>"):
        self.feature_extractor, self.tokenizer, self.audio_token = feature_extractor, tokenizer, audio_token
        if audio_token not in tokenizer.get_vocab():
            raise MustError(f"the tokenizer has no audio token {audio_token!r}; is this a Qwen audio model folder?")

    def apply_chat_template(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text, audio, sampling_rate, return_tensors="pt", padding=True):
        from transformers import BatchFeature

        feats = self.feature_extractor(audio, sampling_rate=sampling_rate, return_attention_mask=True,
                                       padding="max_length", return_tensors="pt")
        lengths = feats["attention_mask"].sum(-1)
        n_tokens = ((((lengths - 1) // 2 + 1) - 2) // 2 + 1).tolist()  # the tower's conv and pooling strides
        expanded, k = [], 0
        for t in text:
            parts = t.split(self.audio_token)
            pieces = [parts[0]]
            for rest in parts[1:]:
                pieces += [self.audio_token * int(n_tokens[k]), rest]
                k += 1
            expanded.append("".join(pieces))
        if k != len(n_tokens):
            raise ValueError(f"{k} audio placeholders in the prompts for {len(n_tokens)} audio windows")
        enc = self.tokenizer(expanded, return_tensors=return_tensors, padding=padding)
        return BatchFeature({**enc, "input_features": feats["input_features"],
                             "feature_attention_mask": feats["attention_mask"]})


def _processor(folder: Path, trust_remote_code: bool):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        # Qwen2.5-Omni's processor cannot be built without torchvision (its video half); the audio half can.
        from transformers import AutoFeatureExtractor, AutoTokenizer

        try:
            return AudioOnlyProcessor(AutoFeatureExtractor.from_pretrained(str(folder)),
                                      AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code))
        except (OSError, ValueError) as inner:
            raise MustError(f"{folder}: its processor does not load ({type(exc).__name__}: {exc}), nor its feature "
                            f"extractor and tokenizer ({inner})") from None


def load_stock(folder: str | Path, trust_remote_code: bool = False) -> StockAudioLLM:
    """A stock audio-LLM folder (:func:`stock_kind`) with its processor, on the GPU when there is one."""
    import transformers

    folder = Path(folder)
    kind = stock_kind(folder)
    if kind is None:
        raise MustError(f"{folder} is not a stock audio-LLM folder (config.json model_type one of "
                        f"{sorted(STOCK_CLASSES)}, no must_config.json)")
    cls = getattr(transformers, STOCK_CLASSES[kind])
    cuda = torch.cuda.is_available()
    kwargs = dict(dtype=torch.bfloat16 if cuda else torch.float32, trust_remote_code=trust_remote_code)
    try:
        if kind == "qwen2_5_omni":  # the full Omni folder: its thinker answers in text (the talker speaks)
            config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
            kwargs["config"] = config.thinker_config
        model = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise MustError(f"stock model folder {folder} ({kind}) does not load: {type(exc).__name__}: {exc}") from None
    return StockAudioLLM(model.to("cuda" if cuda else "cpu").eval(), _processor(folder, trust_remote_code), kind)


def load_for_eval(folder: str | Path, trust_remote_code: bool = False):
    """What ``must eval`` runs: a stock audio LLM for a stock folder, else the must model saved there."""
    if stock_kind(folder) is not None:
        return load_stock(folder, trust_remote_code)
    from must.models.folder import load_model

    return load_model(folder, trust_remote_code=trust_remote_code)
