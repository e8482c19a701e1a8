"""Models: the MusT encoder, the LLM, host LALM adapters and the composed ``MusicLALM``."""
