"""The smallest MusicLALM the stage tests train (``model:`` block of a test recipe)."""

TINY_MODEL = {
    "encoder": {"width": 32, "layers": 1, "heads": 2, "n_mels": 16},
    "llm": {"hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
            "lora": {"r": 4, "alpha": 8}},
    "sampling": {"tokens_per_second": 1.0},
}

SR = 16000


def noise(seconds: float, seed: int = 0):
    """``seconds`` of white noise at ``SR`` Hz, float32 (a stand-in waveform for model tests)."""
    import numpy as np

    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def reloaded(model, folder, question: str, answer: str, seconds: float = 7.0):
    """Save ``model`` to ``folder`` and load it back: (the loaded model, its logits on one noise clip with
    ``question`` and ``answer``), after asserting they equal the saved model's exactly."""
    import torch

    from must.models.lalm import MusicLALM

    with torch.no_grad():
        logits = model(model.encode_audio([noise(seconds)], SR), [question], [answer]).logits
        model.save_pretrained(folder)
        loaded = MusicLALM.from_pretrained(folder).eval()
        again = loaded(loaded.encode_audio([noise(seconds)], SR), [question], [answer]).logits
    assert torch.equal(logits, again)
    return loaded, again
