"""StableSyncNet: official architectures, shapes, loss values, learning on a fixed batch; Wav2Lip mel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentsync.models.syncnet import SYNCNET_CONFIGS, StableSyncNet, syncnet_bce_loss, syncnet_cosine
from latentsync.testing import build_tiny_syncnet
from latentsync.audio_features import mel_start, mel_window, mel_window_length, num_mel_windows, wav2lip_mel

ATTENTION = dict(audio_attn_blocks=[0, 0, 0, 1, 0, 0])  # the shared tiny model has visual attention; add audio's


def tiny_syncnet(seed: int = 0, **overrides) -> StableSyncNet:
    """The shared tiny SyncNet for 64-pixel faces (16-d embeddings), with self-attention in both towers."""
    torch.manual_seed(seed)
    return build_tiny_syncnet(64, **{**ATTENTION, **overrides})


def tiny_batch(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, 48, 32, 64, generator=g) * 2 - 1
    mel = torch.rand(b, 1, 80, 52, generator=g) * 8 - 4
    return frames, mel


# ---------------------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize(
    "preset, total, tensors",
    [("16_pixel_attn", 401.306, 266), ("16_pixel", 371.766, 178), ("16_latent", 65.544, 144),
     ("25_pixel", 103.742, 162)],
)
def test_official_presets_match_parameter_counts(preset, total, tensors):
    with torch.device("meta"):
        model = StableSyncNet.from_preset(preset)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(total, abs=1e-3)
    assert len(model.state_dict()) == tensors
    cfg = model.config
    spatial = (32, 32) if cfg.latent_space else (128, 256)
    frames = torch.empty(2, cfg.visual_in_channels, *spatial, device="meta")
    mel = torch.empty(2, 1, 80, model.mel_frames, device="meta")
    visual, audio = model(frames, mel)
    dim = 1024 if preset in ("16_latent", "25_pixel") else 2048
    assert visual.shape == audio.shape == (2, dim)


def test_official_key_names():
    with torch.device("meta"):
        keys = set(StableSyncNet.from_preset("16_pixel_attn").state_dict())
    for key in [
        "audio_encoder.conv_in.weight",
        "audio_encoder.down_blocks.1.conv_shortcut.weight",
        "audio_encoder.down_blocks.0.downsample_conv.weight",
        "audio_encoder.down_blocks.4.attn.to_q.bias",
        "audio_encoder.down_blocks.4.ff.net.0.proj.weight",
        "audio_encoder.down_blocks.4.conv_out.weight",
        "visual_encoder.down_blocks.9.norm2.weight",
        "visual_encoder.norm_out.bias",
    ]:
        assert key in keys, key
    # audio block 3 (no downsampling) has no downsample conv; the attention block after it takes index 4
    assert "audio_encoder.down_blocks.3.downsample_conv.weight" not in keys
    assert "audio_encoder.down_blocks.3.norm1.weight" in keys


def test_presets_table_is_complete():
    assert set(SYNCNET_CONFIGS) == {"16_pixel_attn", "16_pixel", "16_latent", "25_pixel"}
    with pytest.raises(ValueError, match="unknown SyncNet preset"):
        StableSyncNet.from_preset("nope")


def test_forward_shapes_unit_norm_non_negative():
    model = tiny_syncnet().eval()
    frames, mel = tiny_batch(3)
    visual, audio = model(frames, mel)
    assert visual.shape == audio.shape == (3, model.embedding_dim) == (3, 16)
    torch.testing.assert_close(visual.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(audio.norm(dim=1), torch.ones(3))
    assert (visual >= 0).all() and (audio >= 0).all()
    # (B, F, C, H, W) frames and (B, 80, T) mels are folded the same way
    visual5, audio3 = model(frames.reshape(3, 16, 3, 32, 64), mel[:, 0])
    torch.testing.assert_close(visual5, visual)
    torch.testing.assert_close(audio3, audio)


def test_bad_inputs_are_named():
    model = tiny_syncnet()
    frames, mel = tiny_batch(2)
    with pytest.raises(ValueError, match="frames must be"):
        model(frames[:, :45], mel)
    with pytest.raises(ValueError, match="not 1 x 1"):
        model(torch.zeros(2, 48, 64, 64), mel)
    with pytest.raises(ValueError, match="same size"):
        tiny_syncnet(audio_block_out_channels=[8, 8, 16, 16, 16, 32])


def test_save_load_roundtrip(tmp_path):
    model = tiny_syncnet().eval()
    model.save_pretrained(tmp_path / "syncnet")
    assert (tmp_path / "syncnet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = StableSyncNet.from_pretrained(tmp_path / "syncnet").eval()
    frames, mel = tiny_batch(2)
    for a, b in zip(model(frames, mel), loaded(frames, mel)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.config.visual_attn_blocks == loaded.config.audio_attn_blocks == [0, 0, 0, 1, 0, 0]


def test_gradient_checkpointing_gives_same_gradients():
    frames, mel = tiny_batch(2)
    grads = []
    for checkpointing in (False, True):
        model = tiny_syncnet()
        if checkpointing:
            model.enable_gradient_checkpointing()
        visual, audio = model(frames, mel)
        syncnet_bce_loss(visual, audio, torch.tensor([1.0, 0.0])).backward()
        grads.append(model.visual_encoder.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------------- loss


def test_bce_loss_known_values():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    a = torch.tensor([[2.0, 0.0], [0.5, math.sqrt(0.75)], [0.0, 3.0]])  # cos 1, 0.5, 0
    torch.testing.assert_close(syncnet_cosine(v, a), torch.tensor([1.0, 0.5, 0.0]))
    pos = syncnet_bce_loss(v, a, torch.ones(3), reduction="none")
    neg = syncnet_bce_loss(v, a, torch.zeros(3, 1), reduction="none")
    torch.testing.assert_close(pos, torch.tensor([0.0, math.log(2), 100.0]))  # -log(cos), log floored at -100
    torch.testing.assert_close(neg, torch.tensor([100.0, math.log(2), 0.0]))
    torch.testing.assert_close(syncnet_bce_loss(v, a, torch.tensor([1.0, 1.0, 0.0])), torch.tensor(math.log(2) / 3))
    # cos = 0.8 positive: -log 0.8
    a8 = torch.tensor([[0.8, 0.6]])
    torch.testing.assert_close(syncnet_bce_loss(v[:1], a8, torch.ones(1)), torch.tensor(-math.log(0.8)))
    with pytest.raises(ValueError, match="labels"):
        syncnet_bce_loss(v, a, torch.ones(2))


def test_a_few_steps_reduce_loss_on_a_fixed_batch():
    # the final GroupNorm acts on a 1 x 1 map: it needs several channels per group (official: 2048 / 32)
    small = dict(audio_block_out_channels=[8, 8, 16, 16, 32, 64], visual_block_out_channels=[8, 8, 16, 16, 32, 64],
                 audio_attn_blocks=[0] * 6, visual_attn_blocks=[0] * 6, norm_num_groups=4)
    model = tiny_syncnet(seed=1, **small)
    frames, mel = tiny_batch(6, seed=1)
    labels = torch.tensor([1.0, 0.0] * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        visual, audio = model(frames, mel)
        loss = syncnet_bce_loss(visual, audio, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        cos = syncnet_cosine(*model(frames, mel))
    assert ((cos > 0.5).float() == labels).all()


# ---------------------------------------------------------------------------------------------------- mel


def _reference_signal() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t * (1 + 0.1 * t))
    x = (x + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    x[:4000] *= 0.001
    return x


def test_wav2lip_mel_matches_librosa_reference():
    # reference numbers computed with librosa 0.10.1 (the official pin) + scipy, exactly as the official audio.py
    mel = wav2lip_mel(_reference_signal())
    assert mel.shape == (80, 161) and mel.dtype == np.float32
    assert mel.min() >= -4 and mel.max() <= 4
    expected_rows = [-2.253788, 1.055889, -1.115719, -0.902817, -0.624664, -0.340666, -0.252595, 0.043351]
    np.testing.assert_allclose(mel[[0, 10, 20, 30, 40, 50, 60, 79]].mean(1), expected_rows, atol=2e-5)
    expected_cols = [-3.977963, -0.094923, -0.20158, -0.227159, -0.130086, -0.095367]
    np.testing.assert_allclose(mel[:, [0, 20, 40, 80, 120, 160]].mean(0), expected_cols, atol=2e-5)
    for (i, j), value in {(10, 5): -3.1614936, (40, 60): -0.0150363, (79, 100): 0.3683075, (5, 30): -1.2697697}.items():
        assert mel[i, j] == pytest.approx(value, abs=1e-4)


def test_wav2lip_mel_silence_and_errors():
    mel = wav2lip_mel(np.zeros(16000, dtype=np.float32))
    assert mel.shape == (80, 81)
    np.testing.assert_array_equal(mel, -4.0)  # -100 dB floor - 20 dB reference clips to the minimum
    with pytest.raises(ValueError, match="1-D"):
        wav2lip_mel(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="empty"):
        wav2lip_mel(np.zeros(0))


def test_mel_windows():
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    assert mel_window_length(16) == 52 and mel_window_length(25) == 80 and mel_window_length(5) == 16
    assert [mel_start(s) for s in (0, 1, 2, 5, 7)] == [0, 3, 6, 16, 22]  # int(3.2 * s)
    w = mel_window(mel, 7)
    assert w.shape == (80, 52)
    np.testing.assert_array_equal(w, mel[:, 22:74])
    assert mel_window(mel, 0, 25).shape == (80, 80)
    assert num_mel_windows(100, 16) == 16  # start 15 -> mel 48..99 fits; start 16 -> 51..102 does not
    assert mel_start(num_mel_windows(100, 16) - 1) + 52 <= 100 < mel_start(num_mel_windows(100, 16)) + 52
    with pytest.raises(ValueError, match="too short"):
        mel_window(mel, 16)
    with pytest.raises(ValueError, match=">= 0"):
        mel_window(mel, -1)
