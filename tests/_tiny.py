"""The smallest MusicLALM the stage tests train (``model:`` block of a test recipe)."""

TINY_MODEL = {
    "encoder": {"width": 32, "layers": 1, "heads": 2, "n_mels": 16},
    "llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
            "lora": {"r": 4, "alpha": 8}},
    "sampling": {"tokens_per_second": 1.0},
}
