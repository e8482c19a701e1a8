"""Tiny random stock audio LLMs of the real transformers classes, saved as Hugging Face folders offline:
Qwen2-Audio with its processor, the Qwen2.5-Omni thinker with its feature extractor, tokenizer and chat template
(its processor class needs torchvision, which this machine lacks), and a full-Omni folder holding that thinker."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from must.models.tokenizer import build_tiny_tokenizer

#: Qwen2.5-Omni's tokenizer names these (its processor reads them as tokenizer attributes).
OMNI_TOKENS = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
               "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
               "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}

#: Qwen2.5-Omni's chat template, audio part (each audio item: <|audio_bos|><|AUDIO|><|audio_eos|>).
OMNI_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_config(tok) -> dict:
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False)


AUDIO = dict(num_mel_bins=80, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32)


def save_qwen2_audio(folder: Path) -> Path:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    tok.add_tokens(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"], special_tokens=True)
    config = Qwen2AudioConfig(audio_config=AUDIO, text_config=dict(_text_config(tok), model_type="qwen2"),
                              audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"))
    Qwen2AudioForConditionalGeneration(config).save_pretrained(str(folder))
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    processor.save_pretrained(str(folder))
    return folder


def save_omni_thinker(folder: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig

    torch.manual_seed(0)
    tok = build_tiny_tokenizer()
    tok.add_tokens(list(OMNI_TOKENS.values()), special_tokens=True)
    tok.chat_template = OMNI_TEMPLATE
    tok.save_pretrained(str(folder))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok_config, "extra_special_tokens": OMNI_TOKENS}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    head_dim = 16
    text = dict(_text_config(tok), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]})
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(AUDIO, max_source_positions=1500, n_window=50, output_dim=32),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=text, audio_token_index=tok.audio_token_id, image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id, audio_start_token_id=tok.convert_tokens_to_ids("<|audio_bos|>"),
        audio_end_token_id=tok.convert_tokens_to_ids("<|audio_eos|>"),
        # the real thinker config carries these too (transformers' rope index reads them)
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_bos|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_eos|>"))
    Qwen2_5OmniThinkerForConditionalGeneration(config).save_pretrained(str(folder))
    fe = WhisperFeatureExtractor(feature_size=80)
    fe.save_pretrained(str(folder))
    pre = json.loads((folder / "preprocessor_config.json").read_text())  # as the real repo names its processor
    (folder / "preprocessor_config.json").write_text(json.dumps({**pre, "processor_class": "Qwen2_5OmniProcessor"}))
    return folder


def save_full_omni(folder: Path) -> Path:
    """A ``qwen2_5_omni`` folder (thinker + talker config, ``thinker.``-prefixed weights) holding the tiny thinker
    only, as the real Qwen2.5-Omni repo lays its thinker out; the talker's weights are not needed to answer."""
    from transformers import Qwen2_5OmniConfig

    save_omni_thinker(folder)
    thinker = json.loads((folder / "config.json").read_text())
    Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False).save_pretrained(str(folder))
    weights = load_file(str(folder / "model.safetensors"))
    save_file({f"thinker.{k}": v for k, v in weights.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
