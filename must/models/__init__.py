"""Models: the MusT encoder, the LLM, host LALM adapters and the composed ``MusicLALM``.

from must.models import MusicLALM, ModelConfig
model = MusicLALM.from_config(ModelConfig())          # tiny, CPU, offline
enc = model.encode_audio([waveform], sample_rate=16000)
model.generate(enc, ["When does the bass first appear?"], max_new_tokens=8)
model.save_pretrained("out/model"); MusicLALM.from_pretrained("out/model")
"""

from importlib import import_module

from must.models.config import ModelConfig

# Lazy, so that importing the config (recipe validation, the CLI) does not import transformers and peft.
_LAZY = {
    "AudioEncoding": "must.models.lalm",
    "MusicLALM": "must.models.lalm",
    "EncoderFrames": "must.models.encoder",
    "MusTEncoder": "must.models.encoder",
}

__all__ = ["AudioEncoding", "EncoderFrames", "ModelConfig", "MusTEncoder", "MusicLALM"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'must.models' has no attribute {name!r}")
