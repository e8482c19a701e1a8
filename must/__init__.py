"""must: teach audio-language models *when* things happen in music.

The four-stage MusT recipe (encoder adaptation, LM adaptation, SFT, GRPO) as PyTorch Lightning
modules, chained by a recipe runner. Times are always seconds (floats); in text they are ``M:SS``.
"""

__version__ = "0.1.0"
