"""Audio loading and LatentSync's Whisper features (spec section 2).

Features are computed over the whole file: log-mel with the file-wide maximum, Whisper encoder over 30 s windows,
``encoder_layers + 1`` hidden states per 20 ms token, and for every 25 fps video frame a window of 10 tokens
(2 frames before to 2 frames after) flattened to ``(10 * states, d_model)``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Literal

import imageio_ffmpeg
import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from .errors import InvalidAudioError
from .models.audio_encoder import WhisperAudioEncoder

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VIDEO_FPS = 25
TOKENS_PER_SECOND = 50
WINDOW_MEL_FRAMES = 3000  # 30 s of 10 ms mel frames, the Whisper encoder's fixed input
CONTEXT_FRAMES_BEFORE = 2
CONTEXT_FRAMES_AFTER = 2

AudioWindowMode = Literal["official", "overlap"]


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio (or video) file to mono float32 at ``sample_rate`` Hz with ffmpeg.

    Raises:
        InvalidAudioError: the file is missing, unreadable, has no audio stream, or holds no samples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidAudioError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise InvalidAudioError(f"audio file is empty (0 bytes): {path}")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path, "-map", "0:a:0",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        text = proc.stderr.decode(errors="replace")
        if "matches no streams" in text or "does not contain any stream" in text:
            raise InvalidAudioError(f"no audio stream in {path}")
        reason = text.strip().splitlines()[-1] if text.strip() else f"ffmpeg exit code {proc.returncode}"
        raise InvalidAudioError(f"cannot read audio from {path}: {reason}")
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    if audio.size == 0:
        raise InvalidAudioError(f"audio stream of {path} holds no samples")
    return audio.copy()


def as_samples(audio: str | os.PathLike | np.ndarray | torch.Tensor) -> np.ndarray:
    """Mono float32 samples at 16 kHz from a file (any format ffmpeg reads) or from samples in memory.

    Raises:
        InvalidAudioError: unreadable file, or an array that is empty or not one-dimensional.
    """
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise InvalidAudioError(f"audio samples must be mono (one dimension, 16 kHz), got shape {samples.shape}")
    if samples.size == 0:
        raise InvalidAudioError("audio holds no samples")
    if not np.isfinite(samples).all():
        raise InvalidAudioError("audio samples contain NaN or infinity")
    return samples


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float samples in [-1, 1] as a 16-bit PCM WAV file."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(os.fspath(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(sample_rate)
        fh.writeframes(pcm.tobytes())


def check_not_silent(audio: np.ndarray, path: str = "audio", threshold: float = 1e-4) -> None:
    """Raise [`InvalidAudioError`] when the whole track is silent (nothing to lip-sync to)."""
    if float(np.abs(audio).max()) < threshold:
        raise InvalidAudioError(f"audio track of {path} is silent: there is no speech to lip-sync to")


def num_video_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = VIDEO_FPS) -> int:
    """Number of 25 fps frames that cover ``num_samples`` of audio (rounded to the nearest frame)."""
    return max(1, int(round(num_samples * fps / sample_rate)))


def log_mel(audio: np.ndarray, feature_extractor: WhisperFeatureExtractor) -> np.ndarray:
    """Whisper log-mel of the whole signal ``(n_mels, len(audio) // 160)``, normalised with the file-wide maximum."""
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


def frame_audio_contexts(
    features: torch.Tensor, frames: int | np.ndarray | torch.Tensor, fps: int = VIDEO_FPS
) -> torch.Tensor:
    """Cross-attention contexts ``(len(frames), 10 * states, d_model)`` for the given 25 fps frame indices.

    ``frames`` is a count (frames ``0 .. frames - 1``) or an array of frame indices. Frame ``i`` sees tokens
    ``2i - 4 ... 2i + 5`` (edge tokens replicated), flattened token-major.
    """
    if features.shape[0] == 0:
        raise InvalidAudioError("audio is too short to compute any features")
    step = TOKENS_PER_SECOND / fps
    per_frame = int(round(step))
    frame_idx = torch.arange(frames) if isinstance(frames, int) else torch.as_tensor(frames)
    centre = (frame_idx * step).long()
    offsets = torch.arange(-CONTEXT_FRAMES_BEFORE * per_frame, (CONTEXT_FRAMES_AFTER + 1) * per_frame)
    idx = (centre[:, None] + offsets[None, :]).clamp(0, features.shape[0] - 1)
    windows = features[idx]  # (frames, 10, states, d)
    return windows.reshape(len(frame_idx), -1, features.shape[-1])
