"""Audio features: Whisper windows (official and overlapping) and per-frame contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor

from conftest import write_wav
from latentsync.audio_features import frame_audio_contexts, log_mel, whisper_features
from latentsync.media import check_not_silent, load_audio, num_video_frames
from latentsync.errors import InvalidAudioError
from latentsync.models import WhisperAudioEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        num_mel_bins=80, max_source_positions=1500)
    return WhisperAudioEncoder(cfg).eval()


def test_hidden_state_stack_has_no_final_layer_norm(encoder):
    mel = torch.randn(1, 80, 3000)
    stack = encoder.hidden_state_stack(mel)
    assert stack.shape == (1, 1500, 3, 32)
    ref = encoder(mel).last_hidden_state  # transformers applies the final layer norm
    assert torch.allclose(encoder.layer_norm(stack[:, :, -1]), ref, atol=1e-5)
    assert not torch.allclose(stack[:, :, -1], ref, atol=1e-2)


def test_official_windows_are_independent_30s_segments(encoder):
    mel = np.random.default_rng(0).standard_normal((80, 7000)).astype(np.float32)
    feats = whisper_features(mel, encoder, mode="official")
    assert feats.shape == (3500, 3, 32)
    # the second window starts at mel frame 3000 and sees nothing of the first
    window = torch.from_numpy(mel[:, 3000:6000])[None]
    assert torch.allclose(feats[1500:3000], encoder.hidden_state_stack(window)[0], atol=1e-5)
    # the last, partial window is zero-padded in mel space
    tail = np.zeros((80, 3000), np.float32)
    tail[:, :1000] = mel[:, 6000:]
    assert torch.allclose(feats[3000:], encoder.hidden_state_stack(torch.from_numpy(tail)[None])[0, :500], atol=1e-5)


def test_overlapping_windows_take_tokens_away_from_edges(encoder):
    mel = np.random.default_rng(1).standard_normal((80, 7000)).astype(np.float32)
    official = whisper_features(mel, encoder, mode="official")
    overlap = whisper_features(mel, encoder, mode="overlap", overlap_seconds=10)
    assert overlap.shape == official.shape
    assert torch.allclose(overlap[:1000], official[:1000], atol=1e-5)  # first window is identical
    # around the 30 s boundary (token 1500) the overlap mode uses a window centred there instead
    assert not torch.allclose(overlap[1400:1600], official[1400:1600], atol=1e-3)
    window = torch.from_numpy(mel[:, 2000:5000])[None]
    assert torch.allclose(overlap[1500], encoder.hidden_state_stack(window)[0, 500], atol=1e-5)
    # short audio: both modes agree exactly
    short = mel[:, :2500]
    assert torch.equal(whisper_features(short, encoder, mode="overlap"), whisper_features(short, encoder))


def test_frame_contexts_window_and_edge_replication():
    tokens, states, dim = 20, 5, 3
    feats = torch.arange(tokens, dtype=torch.float32)[:, None, None].expand(tokens, states, dim).clone()
    ctx = frame_audio_contexts(feats, 11)
    assert ctx.shape == (11, 10 * states, dim)
    token_ids = ctx[:, ::states, 0]  # first state of each of the 10 tokens
    assert token_ids[3].tolist() == list(range(2, 12))  # frame 3: tokens 6-4 .. 6+5
    assert token_ids[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # clamped at the start
    assert token_ids[10].tolist() == [16, 17, 18, 19, 19, 19, 19, 19, 19, 19]  # clamped at the end
    # token-major flattening: rows t0L0..t0L4, t1L0, ...
    layered = torch.randn(tokens, states, dim)
    assert torch.equal(frame_audio_contexts(layered, [4])[0, :states], layered[4])
    assert torch.equal(frame_audio_contexts(layered, np.array([3, 4]))[1], frame_audio_contexts(layered, 5)[4])


def test_log_mel_uses_file_wide_maximum(tmp_path):
    fe = WhisperFeatureExtractor(feature_size=80)
    rng = np.random.default_rng(0)
    audio = np.concatenate([0.5 * rng.standard_normal(16000), 0.001 * rng.standard_normal(16000)]).astype(np.float32)
    mel = log_mel(audio, fe)
    assert mel.shape == (80, 200)
    assert mel.min() >= mel.max() - 2.0 - 1e-6  # (x + 4) / 4 scaling of the 8-decade floor
    quiet_alone = log_mel(audio[16000:], fe)
    assert not np.allclose(mel[:, 100:], quiet_alone)  # normalised with the loud part's maximum


def test_load_audio_resamples_to_16k_mono(tmp_path):
    t = np.arange(44100) / 44100
    path = write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate=44100)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 5


def test_silence_and_frame_count():
    with pytest.raises(InvalidAudioError, match="silent"):
        check_not_silent(np.zeros(100, np.float32), "x.wav")
    check_not_silent(np.full(100, 0.1, np.float32))
    assert num_video_frames(16000) == 25 and num_video_frames(16000 * 3 + 300) == 75 and num_video_frames(1) == 1
