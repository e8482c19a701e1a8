"""Models: the MusT encoder, the LLM, host LALM adapters and the composed ``MusicLALM``.

    from must.models import MusicLALM, ModelConfig
    model = MusicLALM.from_config(ModelConfig())          # tiny, CPU, offline
    enc = model.encode_audio([waveform], sample_rate=16000)
    model.generate(enc, ["When does the bass first appear?"], max_new_tokens=8)
    model.save_pretrained("out/model"); MusicLALM.from_pretrained("out/model")
"""

from must.models.config import ModelConfig
from must.models.encoder import EncoderFrames, MusTEncoder
from must.models.lalm import AudioEncoding, MusicLALM

__all__ = ["AudioEncoding", "EncoderFrames", "ModelConfig", "MusTEncoder", "MusicLALM"]
