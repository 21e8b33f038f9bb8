"""Whisper features of training clips, computed once per clip and kept in memory and on disk."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperFeatureExtractor

from ..models.audio_encoder import WhisperAudioEncoder
from ..tempfiles import write_atomically
from .whisper import frame_audio_contexts, log_mel, whisper_features


class AudioClips(Protocol):
    """What the cache needs from a dataset: a stable name and the 16 kHz audio of each clip."""

    def key(self, index: int) -> str: ...

    def load_audio(self, index: int) -> np.ndarray: ...


class AudioFeatureCache:
    """Whisper token features per clip, computed once on the training device (file-wide, as at inference) and kept
    in memory (``max_items`` clips) and optionally on disk (``cache_dir``, safetensors)."""

    def __init__(self, dataset: AudioClips, feature_extractor: WhisperFeatureExtractor,
                 audio_encoder: WhisperAudioEncoder, cache_dir: str | None = None, max_items: int = 512):
        self.dataset, self.cache_dir, self.max_items = dataset, cache_dir, max_items
        self.feature_extractor, self.audio_encoder = feature_extractor, audio_encoder
        self._mem: OrderedDict[int, torch.Tensor] = OrderedDict()
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    def _disk_path(self, index: int) -> str | None:
        if not self.cache_dir:
            return None
        name = hashlib.sha1(self.dataset.key(index).encode()).hexdigest()
        return os.path.join(self.cache_dir, f"{name}.safetensors")

    def features(self, index: int) -> torch.Tensor:
        """Token features ``(tokens, states, d_model)`` of clip ``index`` (float32, CPU)."""
        if index in self._mem:
            self._mem.move_to_end(index)
            return self._mem[index]
        path = self._disk_path(index)
        if path and os.path.isfile(path):
            feats = load_file(path)["features"]
        else:
            mel = log_mel(self.dataset.load_audio(index), self.feature_extractor)
            feats = whisper_features(mel, self.audio_encoder)
            if path:  # through a partial file: another training process may read this clip's file meanwhile
                write_atomically(path, lambda partial: save_file({"features": feats.contiguous()}, partial))
        self._mem[index] = feats
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)
        return feats

    def contexts(self, clip_indices: torch.Tensor, starts: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Per-frame cross-attention contexts ``(B * num_frames, 10 * states, d_model)``, batch-major."""
        out = []
        for index, start in zip(clip_indices.tolist(), starts.tolist()):
            feats = self.features(int(index))
            out.append(frame_audio_contexts(feats, np.arange(start, start + num_frames)))
        return torch.cat(out)
