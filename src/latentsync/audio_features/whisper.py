"""LatentSync's Whisper audio features, computed eagerly or streamed one 30 s window at a time.

Features follow the official code: a log-mel of the whole file normalised with the file-wide maximum, the Whisper
encoder run on 30 s windows, ``encoder_layers + 1`` hidden states per 20 ms token, and for every 25 fps video frame
a context of 10 tokens (2 frames before to 2 frames after) flattened to ``(10 * states, d_model)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from ..errors import InvalidAudioError
from ..media.constants import SAMPLE_RATE, VIDEO_FPS
from ..models.audio_encoder import WhisperAudioEncoder
from ..utils import StageTimer

TOKENS_PER_SECOND = 50
WINDOW_MEL_FRAMES = 3000  # 30 s of 10 ms mel frames, the Whisper encoder's fixed input
CONTEXT_FRAMES_BEFORE = 2
CONTEXT_FRAMES_AFTER = 2

AudioWindowMode = Literal["official", "overlap"]
AUDIO_WINDOW_MODES = ("official", "overlap")


def log_mel(audio: np.ndarray, feature_extractor: WhisperFeatureExtractor) -> np.ndarray:
    """Whisper log-mel of the whole signal ``(n_mels, len(audio) // 160)``, normalised with the file-wide maximum.

    Raises:
        InvalidAudioError: audio shorter than one Whisper token (two mel frames: 320 samples, 20 ms), which has no
            features.
    """
    shortest = 2 * feature_extractor.hop_length
    if len(audio) < shortest:
        raise InvalidAudioError(f"audio is too short to compute any features: {len(audio)} samples "
                                f"({1000 * len(audio) / SAMPLE_RATE:.1f} ms), at least {shortest} "
                                f"({1000 * shortest / SAMPLE_RATE:g} ms at 16 kHz) are needed")
    out = feature_extractor(audio, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False, return_tensors="np")
    return out["input_features"][0]


def _window_starts(num_mel: int, mode: AudioWindowMode, overlap_mel_frames: int) -> list[int]:
    if mode == "official" or num_mel <= WINDOW_MEL_FRAMES:
        return list(range(0, max(num_mel, 1), WINDOW_MEL_FRAMES))
    stride = WINDOW_MEL_FRAMES - overlap_mel_frames
    if stride <= 0 or stride % 2:
        raise ValueError("overlap must leave a positive, even stride of mel frames")
    starts = list(range(0, num_mel - WINDOW_MEL_FRAMES, stride)) + [num_mel - WINDOW_MEL_FRAMES]
    starts[-1] -= starts[-1] % 2  # keep windows aligned to whole tokens
    return starts


@torch.no_grad()
def whisper_features(
    mel: np.ndarray,
    encoder: WhisperAudioEncoder,
    mode: AudioWindowMode = "official",
    overlap_seconds: float = 10.0,
    batch_size: int = 4,
) -> torch.Tensor:
    """Encode a log-mel ``(n_mels, M)`` into token features ``(M // 2, states, d_model)`` (float32, CPU).

    ``mode="official"`` reproduces the official code: independent, non-overlapping 30 s windows, each zero-padded
    in mel space, so context restarts every 30 s. ``mode="overlap"`` runs windows that overlap by
    ``overlap_seconds`` and takes each token from the window in which it lies furthest from an edge, which removes
    the discontinuity at 30 s boundaries.
    """
    num_mel = mel.shape[1]
    num_tokens = num_mel // 2
    starts = _window_starts(num_mel, mode, int(round(overlap_seconds * 100)) // 2 * 2)
    device, dtype = encoder.device, encoder.dtype
    windows = []
    for s in starts:
        w = np.zeros((mel.shape[0], WINDOW_MEL_FRAMES), dtype=np.float32)
        seg = mel[:, s : s + WINDOW_MEL_FRAMES]
        w[:, : seg.shape[1]] = seg
        windows.append(w)
    outputs = []
    for i in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.stack(windows[i : i + batch_size])).to(device=device, dtype=dtype)
        outputs.append(encoder.hidden_state_stack(batch).float().cpu())
    encoded = torch.cat(outputs)  # (windows, 1500, states, d_model)
    feats = torch.empty((num_tokens,) + tuple(encoded.shape[2:]), dtype=torch.float32)
    tok_starts = [s // 2 for s in starts]
    half = WINDOW_MEL_FRAMES // 2
    if mode == "official" or len(starts) == 1:
        for k, ts in enumerate(tok_starts):
            n = min(half, num_tokens - ts)
            feats[ts : ts + n] = encoded[k, :n]
        return feats
    # overlap: each token comes from the window whose centre is nearest
    token_idx = torch.arange(num_tokens)
    centres = torch.tensor([ts + half / 2 for ts in tok_starts])
    owner = (token_idx[:, None] - centres[None, :]).abs().argmin(dim=1)
    for k, ts in enumerate(tok_starts):
        sel = token_idx[owner == k]
        feats[sel] = encoded[k, sel - ts]
    return feats


class StreamedAudioFeatures:
    """Whisper token features computed one 30 s window at a time, when first needed (``"official"`` windows).

    Stands in for the ``(tokens, states, d_model)`` tensor of [`whisper_features`] in [`frame_audio_contexts`]
    (``shape`` and indexing by token), so that memory does not grow with the audio's length (the eager tensor takes
    about 0.4 MB per second of audio with the real model). Windows are independent in the official mode, so the
    values are those of the eager computation (up to float rounding of batched windows). The two most recent
    windows are kept.
    """

    def __init__(self, mel: np.ndarray, encoder: WhisperAudioEncoder, timer: StageTimer | None = None):
        self.mel = mel
        self.encoder = encoder
        self.timer = timer or StageTimer()
        self.shape = torch.Size((mel.shape[1] // 2, encoder.num_feature_states, encoder.config.d_model))
        self._windows: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _window(self, k: int) -> torch.Tensor:
        if k not in self._windows:
            span = WINDOW_MEL_FRAMES
            with self.timer("audio_features"):
                self._windows[k] = whisper_features(self.mel[:, k * span : (k + 1) * span], self.encoder)
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return self._windows[k]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        flat = torch.as_tensor(idx).reshape(-1)
        tokens = WINDOW_MEL_FRAMES // 2
        out = torch.empty((flat.numel(),) + tuple(self.shape[1:]), dtype=torch.float32)
        window = torch.div(flat, tokens, rounding_mode="floor")
        for k in window.unique().tolist():
            sel = window == k
            out[sel] = self._window(k)[flat[sel] - k * tokens]
        return out.reshape(tuple(torch.as_tensor(idx).shape) + tuple(self.shape[1:]))


def frame_audio_contexts(
    features: torch.Tensor | StreamedAudioFeatures, frames: int | np.ndarray | torch.Tensor, fps: int = VIDEO_FPS
) -> torch.Tensor:
    """Cross-attention contexts ``(len(frames), 10 * states, d_model)`` for the given 25 fps frame indices.

    ``frames`` is a count (frames ``0 .. frames - 1``) or an array of frame indices. Frame ``i`` sees tokens
    ``2i - 4 ... 2i + 5`` (edge tokens replicated), flattened token-major.
    """
    step = TOKENS_PER_SECOND / fps
    frame_idx = torch.arange(frames) if isinstance(frames, int) else torch.as_tensor(frames)
    return _token_contexts(features, (frame_idx * step).long())


def audio_contexts_at(features: torch.Tensor | StreamedAudioFeatures, times: np.ndarray | Sequence[float]
                      ) -> torch.Tensor:
    """Cross-attention contexts ``(len(times), 10 * states, d_model)`` of frames shown at ``times`` (seconds).

    The 20 ms Whisper tokens are picked, not interpolated: a frame at time ``t`` takes the token that covers ``t``
    (``floor(50 t)``) as its centre, with 4 tokens before and 5 after, which is exactly the context a frame of the
    25 fps timeline gets at that instant (frame ``i`` is at ``t = i / 25``, token ``2i``). Mixing neighbouring tokens
    would give the U-Net features it never saw in training; picking keeps every frame on a real token, with at most
    half a token (10 ms) between a frame's time and its centre token's start.
    """
    seconds = np.asarray(times, dtype=np.float64)
    # the small epsilon keeps times that are whole tokens (k / 50 s, rounded in floating point) on token k
    centre = torch.from_numpy(np.floor(seconds * TOKENS_PER_SECOND + 1e-6).astype(np.int64))
    return _token_contexts(features, centre)


def _token_contexts(features: torch.Tensor | StreamedAudioFeatures, centre: torch.Tensor) -> torch.Tensor:
    """The 10 tokens around each centre token (4 before, 5 after, edge tokens replicated), flattened token-major:
    ``(len(centre), 10 * states, d_model)``."""
    if features.shape[0] == 0:
        raise InvalidAudioError("audio is too short to compute any features")
    per_frame = int(round(TOKENS_PER_SECOND / VIDEO_FPS))
    offsets = torch.arange(-CONTEXT_FRAMES_BEFORE * per_frame, (CONTEXT_FRAMES_AFTER + 1) * per_frame)
    idx = (centre[:, None] + offsets[None, :]).clamp(0, features.shape[0] - 1)
    windows = features[idx]  # (frames, 10, states, d)
    return windows.reshape(len(centre), -1, features.shape[-1])


def encode_audio_features(
    samples: np.ndarray,
    feature_extractor: WhisperFeatureExtractor,
    encoder: WhisperAudioEncoder,
    mode: AudioWindowMode = "official",
    stream: bool = False,
    timer: StageTimer | None = None,
) -> torch.Tensor | StreamedAudioFeatures:
    """Whisper token features of 16 kHz mono ``samples``: eager ``(tokens, states, d_model)``, or, with ``stream``
    in the official mode, a [`StreamedAudioFeatures`] that encodes each 30 s window when it is first read."""
    mel = log_mel(samples, feature_extractor)
    if stream and mode == "official":  # independent windows: computed as the video advances
        return StreamedAudioFeatures(mel, encoder, timer)
    return whisper_features(mel, encoder, mode=mode)
