"""The U-Net's inputs are the official ones: the shipped mouth mask, and one seeded window drawn and denoised as the
official pipeline does it (float64, so any difference above round-off is a real difference).

The reference (official_reference.py) is written from the official pipeline's definition in plain operations and
reads the mask straight from the PNG; it shares no code with latentsync's pipeline (it uses the same networks and
scheduler class, whose own parity is checked in test_loaders.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import official_mask, official_windows, shipped_mask_path

from latentsync.face import latent_mouth_mask, mouth_mask

OFFICIAL_MASK = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official-mask.png"


def test_shipped_mask_is_the_official_file_with_its_notice():
    shipped = shipped_mask_path()
    notice = shipped.parent / "NOTICE"
    assert "Apache License, Version 2.0" in notice.read_text() and "mouth_mask.png" in notice.read_text()
    if not OFFICIAL_MASK.is_file():
        pytest.skip(f"official mask not found at {OFFICIAL_MASK} (../shared/reference)")
    assert hashlib.sha256(shipped.read_bytes()).digest() == hashlib.sha256(OFFICIAL_MASK.read_bytes()).digest()


@pytest.mark.parametrize("resolution", [256, 512])
def test_mask_equals_the_official_recipe_exactly(resolution):
    ref = official_mask(resolution, shipped_mask_path())
    ours = mouth_mask(resolution)
    assert ours.dtype == np.float64 and ours.shape == (resolution, resolution) and not ours.flags.writeable
    assert np.array_equal(ours, ref[..., 0])
    assert np.array_equal(ref[..., 0], ref[..., 1]) and np.array_equal(ref[..., 0], ref[..., 2])
    # 1 keeps, 0 regenerates: mouth and cheeks generated, eyes and nose kept; about 41 % of the face
    assert 0.40 < 1 - ours.mean() < 0.42
    s = resolution / 256
    assert ours[int(200 * s), int(128 * s)] == 0 and ours[int(60 * s), int(128 * s)] == 1
    assert ours[int(110 * s), int(128 * s)] == 1 and ours[int(110 * s), int(30 * s)] == 0
    values = np.unique(ours)
    if resolution == 256:
        assert values.tolist() == [0.0, 1.0]  # the binary image itself
    else:  # Lanczos ringing kept as 8-bit values (k / 255), as the weights were trained with
        assert len(values) > 2 and np.array_equal(values * 255, np.round(values * 255))
        assert values.min() == 0 and values.max() == 1


@pytest.mark.parametrize("resolution", [256, 512])
def test_latent_mask_is_the_nearest_downsample(resolution):
    size = resolution // 8
    ours = latent_mouth_mask(resolution, (size, size))
    assert ours.shape == (1, 1, size, size) and ours.dtype == torch.float64
    # nearest with an integer factor picks the top-left pixel of every 8 x 8 cell
    assert torch.equal(ours[0, 0], torch.from_numpy(official_mask(resolution, shipped_mask_path())[::8, ::8, 0]))


# ============================================================================ one seeded window, float64


def test_seeded_window_matches_the_official_pipeline_in_float64(tiny_model_dir, real_clip, real_speech):
    from latentsync import LatentSyncPipeline

    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    faces, contexts, final = [], [], []
    condition, denoise, decode = pipe.prepare_condition_latents, pipe.denoise, pipe.decode_latents

    def spy_condition(window_faces, *args, **kwargs):
        faces.append(window_faces.copy())
        return condition(window_faces, *args, **kwargs)

    def spy_denoise(latents, condition_latents, audio_embeds, *args, **kwargs):
        contexts.append(audio_embeds.clone())
        return denoise(latents, condition_latents, audio_embeds, *args, **kwargs)

    def spy_decode(latents):  # a window's final latents (1, 4, f, h, w)
        final.append(latents.clone())
        return decode(latents)

    pipe.prepare_condition_latents, pipe.denoise, pipe.decode_latents = spy_condition, spy_denoise, spy_decode
    pipe(real_clip, real_speech, num_inference_steps=3, guidance_scale=1.5, overlap_stages=False,
         generator=torch.Generator().manual_seed(1247))
    assert len(faces) == len(contexts) == len(final) >= 2  # 38 frames: windows of 16, 16 and 6

    with torch.no_grad():
        ref = official_windows(pipe.unet, pipe.vae, pipe.scheduler, faces, contexts, 3, 1.5, 1247,
                               pipe.config.resolution)
    for ours, theirs in zip(final, ref):  # both (1, 4, f, h, w)
        assert theirs.abs().mean() > 0.1
        assert (ours - theirs).abs().max().item() < 1e-10

    # the test tells the order of draws apart: reference faces sampled before masked faces is another result (the
    # first window shows it; the draws of later windows come after its own)
    with torch.no_grad():
        other = official_windows(pipe.unet, pipe.vae, pipe.scheduler, faces[:1], contexts[:1], 3, 1.5, 1247,
                                 pipe.config.resolution, masked_first=False)
    assert (final[0] - other[0]).abs().max().item() > 1e-3
