"""Host LALM adapters: the host's own frozen audio tower makes tokens that sit beside the MusT tokens.

Supported: ``Qwen2AudioForConditionalGeneration`` (Whisper-style tower + linear projector, 30 s at a
time) and the Qwen2.5-Omni thinker (``Qwen2_5OmniThinkerForConditionalGeneration``, whose tower
already projects to the text width). Long tracks are fed to the tower in ``window_seconds`` windows
and the tokens concatenated, so the host hears the whole track too. The embeddings are then placed
in ``inputs_embeds`` by :class:`must.models.lalm.MusicLALM`; the host's own ``input_features`` path
is never used, which keeps training, GRPO and generation on one code path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HOST_SAMPLE_RATE = 16000


def audio_tower(model: nn.Module) -> nn.Module:
    """The host's audio tower module (to freeze it)."""
    return model.model.audio_tower


def _extractor(model: nn.Module):
    from transformers import WhisperFeatureExtractor

    n_mels = model.config.audio_config.num_mel_bins
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=HOST_SAMPLE_RATE)


@torch.no_grad()
def host_audio_embeds(
    model: nn.Module, kind: str, waves: list[np.ndarray], window_seconds: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host audio tokens for mono 16 kHz waveforms -> (B, Th, H) embeddings and (B, Th) mask."""
    device = next(model.parameters()).device
    extractor = _extractor(model)
    if kind == "qwen2_audio":
        # the tower takes a fixed number of mel frames; a longer window would be cut, so never ask for one
        capacity = (
            model.config.audio_config.max_source_positions * 2 * extractor.hop_length / HOST_SAMPLE_RATE
        )
        window_seconds = min(window_seconds, capacity)
    win = int(window_seconds * HOST_SAMPLE_RATE)
    chunks, owner = [], []
    for i, w in enumerate(waves):
        for lo in range(0, max(len(w), 1), win):
            chunks.append(w[lo : lo + win])
            owner.append(i)
    if kind == "qwen2_audio":
        n_frames = model.config.audio_config.max_source_positions * 2  # the tower wants exactly this length
        feats = extractor(
            chunks,
            sampling_rate=HOST_SAMPLE_RATE,
            return_tensors="pt",
            padding="max_length",
            max_length=n_frames * extractor.hop_length,
            return_attention_mask=True,
        )
        tower = audio_tower(model)
        x = feats.input_features.to(device, tower.dtype)
        hidden = tower(x).last_hidden_state
        _, out_len = tower._get_feat_extract_output_lengths(feats.attention_mask.sum(-1))
        tokens = model.model.multi_modal_projector(hidden)
        per_chunk = [tokens[j, : int(n)] for j, n in enumerate(out_len)]
    elif kind == "qwen2_5_omni":
        feats = extractor(
            chunks,
            sampling_rate=HOST_SAMPLE_RATE,
            return_tensors="pt",
            padding="longest",
            return_attention_mask=True,
        )
        mask = feats.attention_mask.to(device)
        out = model.get_audio_features(
            feats.input_features.to(device, model.dtype), feature_attention_mask=mask
        )
        _, out_len = audio_tower(model)._get_feat_extract_output_lengths(mask.sum(-1))
        per_chunk = list(torch.split(out.last_hidden_state, [int(n) for n in out_len]))
    else:
        raise ValueError(f"no host audio tower for kind {kind!r}")
    items = [torch.cat([c for c, o in zip(per_chunk, owner) if o == i]) for i in range(len(waves))]
    width = max(len(t) for t in items)
    embeds = torch.zeros(len(items), width, items[0].shape[-1], device=device, dtype=items[0].dtype)
    mask = torch.zeros(len(items), width, dtype=torch.bool, device=device)
    for i, t in enumerate(items):
        embeds[i, : len(t)], mask[i, : len(t)] = t, True
    return embeds, mask
