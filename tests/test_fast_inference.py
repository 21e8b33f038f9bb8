"""Fast-inference options: DeepCache, other schedulers, cached VAE latents when looping, VAE slicing/tiling, CPU
offload, and the bounded-memory streaming (peak RSS of a long video against a short one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from conftest import decode, ffmpeg, psnr
from latentsync import LatentSyncPipeline, LatentSyncPipelineOutput, LatentSyncUNet
from latentsync.models import UNetFeatureCache
from latentsync.schedulers import SCHEDULERS
from latentsync.streaming import VideoStream
from latentsync.testing import build_tiny_pipeline

FRAMES = 4
RESOLUTION = 128  # smaller faces than the shared tiny model, to keep these tests fast


@pytest.fixture
def pipe():
    """A private tiny pipeline (tests here change its scheduler and VAE settings)."""
    p = build_tiny_pipeline(resolution=RESOLUTION)
    p.set_progress_bar_config(disable=True)
    return p


def _window(pipe, seed=0):
    """Random faces, audio contexts and initial noise for one window of FRAMES frames."""
    g = torch.Generator().manual_seed(seed)
    res = pipe.config.resolution
    faces = torch.randint(0, 256, (FRAMES, res, res, 3), generator=g, dtype=torch.uint8).numpy()
    enc = pipe.audio_encoder
    ctx = torch.randn(FRAMES, 10 * enc.num_feature_states, enc.config.d_model, generator=g)
    noise = torch.randn(1, 4, 1, res // 8, res // 8, generator=g)
    return faces, ctx, noise


def _generate(pipe, window, steps=6, seed=0, deep_cache_interval=0):
    """One window through the pipeline's steps: condition latents, denoising (guidance 1.5), decoding."""
    faces, ctx, noise = window
    generator = torch.Generator().manual_seed(seed)
    condition = pipe.prepare_condition_latents(faces, generator)
    deep_cache = UNetFeatureCache(pipe.unet, deep_cache_interval) if deep_cache_interval else None
    latents = pipe.denoise(noise, condition, ctx, steps, 1.5, generator, deep_cache)
    return pipe.decode_latents(latents)


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# ---------------------------------------------------------------------------------------------------- DeepCache


def _small_full_layout_unet():
    """The full-size block layout (4 levels, 2 layers per block, 3 cross-attention levels) with few channels."""
    torch.manual_seed(0)
    return LatentSyncUNet(block_out_channels=(16, 16, 32, 32), norm_num_groups=8, cross_attention_dim=32,
                          num_attention_heads=2, motion_num_attention_heads=2).eval()


@pytest.mark.parametrize("layout", ["full", "tiny"])
def test_deep_cache_full_pass_is_exact_and_shallow_pass_reuses_the_deep_features(layout, pipe):
    unet = _small_full_layout_unet() if layout == "full" else pipe.unet
    d = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 4, 16, 16, generator=g)
    ctx = torch.randn(8, 5, d, generator=g)
    x2 = x + 0.5 * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        ref = unet(x, 500, encoder_hidden_states=ctx).sample
        ref2 = unet(x2, 480, encoder_hidden_states=ctx).sample
        max_branch = UNetFeatureCache.max_branch(unet)
        # 0: cached feature inside the last up block; 1: at an up block's input; 2: a downsampler in the branch
        for branch in sorted({0, 1, 2, max_branch}):
            cache = UNetFeatureCache(unet, interval=2, branch=branch)
            assert torch.equal(cache(x, 500, ctx, step=0), ref)  # full pass == UNetMotionModel.forward, bit for bit
            # a shallow pass on the same input recomputes the shallow branch around the cached deep feature: exact
            assert torch.equal(cache(x, 500, ctx, step=1), ref)
            # on a new input only the shallow branch follows it: different from the old output and the new one
            approx = cache(x2, 480, ctx, step=1)
            assert not torch.equal(approx, ref) and not torch.equal(approx, ref2)
            assert (cache.full_passes, cache.shallow_passes) == (1, 2)
    with pytest.raises(ValueError, match="branch"):
        UNetFeatureCache(unet, interval=3, branch=UNetFeatureCache.max_branch(unet) + 1)


def test_deep_cache_interval_one_equals_plain_and_interval_three_skips_deep_passes(pipe):
    window = _window(pipe)
    calls, handle = _count_calls(pipe.unet.mid_block)  # the deepest block runs once per full U-Net pass
    try:
        plain = _generate(pipe, window)
        n_plain = len(calls)
        every_step = _generate(pipe, window, deep_cache_interval=1)
        n_every = len(calls) - n_plain
        cached = _generate(pipe, window, deep_cache_interval=3)
        n_cached = len(calls) - n_plain - n_every
    finally:
        handle.remove()
    assert np.array_equal(every_step, plain)
    assert (n_plain, n_every, n_cached) == (6, 6, 2)  # 6 steps: full passes at steps 0 and 3 only
    assert not np.array_equal(cached, plain)
    other_noise = _generate(pipe, (*window[:2], torch.randn(window[2].shape, generator=torch.Generator().manual_seed(9))))
    # DeepCache stays much closer to the plain result than a different initial noise is
    assert psnr(cached, plain) > psnr(other_noise, plain) + 10


# ---------------------------------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("name", ["dpm++", "unipc", "euler"])
def test_other_schedulers_run(pipe, name):
    window = _window(pipe)
    ddim = _generate(pipe, window, steps=4)
    scheduler = pipe.set_scheduler(name)
    assert isinstance(scheduler, SCHEDULERS[name])
    assert scheduler.config.beta_schedule == "scaled_linear"  # same noise schedule as the DDIM config
    out = _generate(pipe, window, steps=4)
    assert out.shape == ddim.shape and out.dtype == np.uint8
    assert not np.array_equal(out, ddim)
    assert np.array_equal(_generate(pipe, window, steps=4), out)  # deterministic for a seed


def test_dpm_solver_the_diffusers_way_end_to_end_and_saved(pipe, example_face, one_window, tmp_path):
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    out = pipe(video=example_face, audio=one_window, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape[0] == 16 and out.frames_without_face == 0
    pipe.save_pretrained(tmp_path / "saved")
    assert isinstance(LatentSyncPipeline.from_pretrained(tmp_path / "saved").scheduler, DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="unknown scheduler"):
        pipe.set_scheduler("plms")


# ---------------------------------------------------------------------------------------------------- latent cache


@pytest.fixture
def short_loop(example_face, example_speech, tmp_path):
    """A 1 s video (25 frames) with 1.6 s of speech (40 frames): the output plays 15 frames backwards."""
    video, audio = tmp_path / "face1s.mp4", tmp_path / "speech.wav"
    ffmpeg("-i", os.fspath(example_face), "-t", "1", "-c:v", "libx264", "-crf", "12", os.fspath(video))
    ffmpeg("-i", os.fspath(example_speech), "-t", "1.6", os.fspath(audio))
    return video, audio


def test_looping_video_reuses_vae_encodings(pipe, short_loop, monkeypatch):
    # deterministic VAE encodings (posterior mode, one frame at a time so that float rounding does not depend on
    # the batch), so that caching must not change the output at all
    def encode_mode(pixels, generator):
        pixels = pixels.to(pipe._execution_device, pipe.vae.dtype)
        latents = torch.cat([pipe.vae.encode(p[None]).latent_dist.mode() for p in pixels])
        return latents * pipe.vae.config.scaling_factor

    monkeypatch.setattr(pipe, "_vae_encode", encode_mode)
    encoded = []
    real_encode = pipe.vae.encode
    monkeypatch.setattr(pipe.vae, "encode", lambda x, *a, **k: encoded.append(x.shape[0]) or real_encode(x, *a, **k))

    def run(**kw):
        encoded.clear()
        out = pipe(video=short_loop[0], audio=short_loop[1], num_inference_steps=1, guidance_scale=1.0,
                   generator=torch.Generator().manual_seed(0), **kw)
        return out, sum(encoded)

    n_src = len(decode(short_loop[0]))
    cached, n_cached = run()  # looping: the cache is on by default
    plain, n_plain = run(cache_latents=False)
    assert (n_src, cached.num_frames) == (25, 40)
    assert n_plain == 2 * cached.num_frames  # reference + masked image of every output frame
    assert n_cached == 2 * n_src  # ... of every source frame, once
    assert np.array_equal(cached.frames, plain.frames)


# ---------------------------------------------------------------------------------------------------- VAE, offload


def test_vae_slicing_and_tiling(pipe, caplog):
    window = _window(pipe)
    plain = _generate(pipe, window, steps=2)
    pipe.enable_vae_slicing()
    sliced = _generate(pipe, window, steps=2)
    pipe.disable_vae_slicing()
    assert np.abs(sliced.astype(int) - plain).max() <= 1  # same up to float rounding of batched convolutions
    with caplog.at_level("INFO", logger="latentsync"):
        pipe.enable_vae_tiling()  # the tiny VAE's tile is 32 px, so the 128 px faces are tiled
    assert pipe.vae.use_tiling and "no effect" not in caplog.text
    tiled = _generate(pipe, window, steps=2)
    pipe.disable_vae_tiling()
    assert tiled.shape == plain.shape and psnr(tiled, plain) > 20
    # a tile as large as the faces (sd-vae-ft-mse's 256 px with LatentSync 1.5's 256 px faces): never tiled, said so
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = RESOLUTION, RESOLUTION // pipe.vae_scale_factor
    with caplog.at_level("INFO", logger="latentsync"):
        pipe.enable_vae_tiling()
    assert f"no effect here: the faces are {RESOLUTION} px and the VAE's tile is {RESOLUTION} px" in caplog.text
    assert np.array_equal(_generate(pipe, window, steps=2), plain)
    pipe.disable_vae_tiling()


def test_model_cpu_offload_gives_the_same_output(pipe):
    window = _window(pipe)
    plain = _generate(pipe, window, steps=3)
    plain_cached = _generate(pipe, window, steps=3, deep_cache_interval=2)
    offloaded = build_tiny_pipeline(resolution=RESOLUTION)
    offloaded.set_progress_bar_config(disable=True)
    # on this CPU-only machine the "accelerator" is the CPU itself: this checks the hooks and device handling
    offloaded.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(_generate(offloaded, window, steps=3), plain)
    assert np.array_equal(_generate(offloaded, window, steps=3, deep_cache_interval=2), plain_cached)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sequential CPU offload needs a GPU")
def test_sequential_cpu_offload_on_gpu(pipe):
    window = _window(pipe)
    reference = _generate(pipe.to("cuda"), window, steps=3)
    offloaded = build_tiny_pipeline(resolution=RESOLUTION)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_sequential_cpu_offload()
    out = _generate(offloaded, window, steps=3, deep_cache_interval=2)
    assert out.shape == reference.shape and psnr(out, _generate(pipe, window, steps=3, deep_cache_interval=2)) > 40


# ---------------------------------------------------------------------------------------------------- streaming


def test_short_loop_tail_and_disk_cache_give_identical_frames(pipe, short_loop, monkeypatch):
    """A slightly longer audio loops from frames kept in memory; a long loop from the on-disk cache: same frames."""
    def run():
        return pipe(video=short_loop[0], audio=short_loop[1], num_inference_steps=1, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0), return_frames=True).frames

    used_disk = []
    frames_in_order = VideoStream.frames_in_order

    def spy(stream):
        used_disk.append(stream.cache_path is not None)
        return frames_in_order(stream)

    monkeypatch.setattr(VideoStream, "frames_in_order", spy)
    in_memory = run()  # 15 frames loop back, kept in memory
    monkeypatch.setattr(VideoStream, "max_tail_frames", 0)
    from_disk = run()
    assert used_disk == [False, True]
    assert np.array_equal(from_disk, in_memory)


def test_streamed_file_and_frames_in_memory_give_identical_frames(pipe, short_loop, tmp_path):
    """Non-streaming input (every frame and the audio samples in memory) gives the streamed file's frames."""
    from PIL import Image

    from latentsync.media import load_audio
    from latentsync.media import probe_video

    video, audio = short_loop

    def run(v, a, **kw):
        return pipe(video=v, audio=a, num_inference_steps=1, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0), return_frames=True, **kw)

    streamed = run(video, audio).frames
    frames, samples = decode(video), load_audio(audio)
    out = tmp_path / "in_memory.mp4"
    in_memory = run(frames, samples, output_path=out)
    assert np.array_equal(in_memory.frames, streamed)
    assert probe_video(out).has_audio and in_memory.num_frames == 40
    assert np.array_equal(run([Image.fromarray(f) for f in frames], torch.from_numpy(samples)).frames, streamed)


def test_bad_frames_or_samples_in_memory(pipe, short_loop, tmp_path):
    from latentsync.errors import InvalidAudioError, InvalidVideoError

    video, audio = short_loop
    frames = decode(video)
    out = tmp_path / "out.mp4"
    cases = [
        ([], audio, InvalidVideoError, "no frames"),
        (frames.astype(np.float32), audio, InvalidVideoError, r"values in \[0, 1\]"),
        ([frames[0], frames[1][:-2]], audio, InvalidVideoError, "same size"),
        (frames, np.zeros((2, 2, 16000), np.float32), InvalidAudioError, "mono"),
        (frames, np.zeros(0, np.float32), InvalidAudioError, "no samples"),
        (frames, np.zeros(16000, np.float32), InvalidAudioError, "silent"),
    ]
    for v, a, error, message in cases:
        with pytest.raises(error, match=message):
            pipe(video=v, audio=a, output_path=out, num_inference_steps=1)
        assert not out.exists() and not list(tmp_path.glob(".*"))


def test_streamed_audio_features_match_the_eager_ones(pipe):
    from latentsync import audio_features
    from latentsync.audio_features import StreamedAudioFeatures
    from latentsync.media import num_video_frames

    samples = (0.1 * np.random.default_rng(0).standard_normal(16000 * 65)).astype(np.float32)  # 3 windows of 30 s
    mel = audio_features.log_mel(samples, pipe.feature_extractor)
    eager = audio_features.whisper_features(mel, pipe.audio_encoder)
    streamed = StreamedAudioFeatures(mel, pipe.audio_encoder)
    assert streamed.shape == eager.shape
    n = num_video_frames(len(samples))
    for start in range(0, n, 16):  # in output order, as the pipeline asks for them
        frames = np.arange(start, min(start + 16, n))
        expected = audio_features.frame_audio_contexts(eager, frames)
        assert torch.allclose(audio_features.frame_audio_contexts(streamed, frames), expected, atol=1e-5)
        assert len(streamed._windows) <= 2


PEAK_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from latentsync.testing import build_tiny_pipeline
    torch.set_num_threads(1)
    pipe = build_tiny_pipeline(resolution=64)  # small faces: the model part is not what this test measures
    pipe.set_progress_bar_config(disable=True)
    out = pipe(video=sys.argv[1], audio=sys.argv[2], output_path=sys.argv[3], num_inference_steps=1,
               guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    print(json.dumps({"frames": out.num_frames, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def test_peak_memory_does_not_grow_with_video_length(example_face, example_speech, tmp_path):
    """Peak RSS of 720 x 720 videos: 3 s, 8.5 s streamed, and 8.5 s looped to 13 s (read back from the disk cache).
    The three peaks were within 40 MiB of each other on the CI kind of machine (also with 16 s and 24 s)."""
    side = 720

    def make(name, video_seconds, audio_seconds):
        video, audio = tmp_path / f"{name}.mp4", tmp_path / f"{name}.wav"
        ffmpeg("-stream_loop", "-1", "-i", os.fspath(example_face), "-t", str(video_seconds), "-vf",
               f"scale={side}:{side}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", os.fspath(video))
        ffmpeg("-stream_loop", "-1", "-i", os.fspath(example_speech), "-t", str(audio_seconds), os.fspath(audio))
        return [sys.executable, "-c", PEAK_RSS_SCRIPT, os.fspath(video), os.fspath(audio),
                os.fspath(tmp_path / f"{name}_out.mp4")]

    cases = {"short": make("short", 3, 3), "streamed": make("streamed", 8.5, 8.5), "looped": make("looped", 8.5, 13)}
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in cases.items()}  # separate processes: each peak RSS is its own
    peaks, frames = {}, {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        peaks[name], frames[name] = result["peak_mib"], result["frames"]
    assert frames == {"short": 75, "streamed": 212, "looped": 325}
    frame_mib = side * side * 3 / 2**20
    margin = 120  # MiB: allocator noise, in-flight windows, per-frame landmarks
    for name in ("streamed", "looped"):
        # holding the frames would cost 314 MiB (streamed) / 470 MiB (looped): far above the margin
        assert frames[name] * frame_mib > 2.5 * margin
        assert peaks[name] < peaks["short"] + margin, peaks


def test_cli_speed_options_reach_the_pipeline(tiny_model_dir, example_face, example_speech, tmp_path, monkeypatch):
    from latentsync.commands import main

    seen = {}

    def spy(self, **kwargs):
        seen.update(kwargs, scheduler=type(self.scheduler).__name__, slicing=self.vae.use_slicing,
                    compiled=getattr(self, "_compiled_step", None) is not None, offload=hasattr(self.unet, "_hf_hook"),
                    fused=self.unet.fused_norm)
        return LatentSyncPipelineOutput(frames=None, fps=25.0, path=kwargs["output_path"], num_frames=0,
                                        frames_without_face=0)

    monkeypatch.setattr(LatentSyncPipeline, "__call__", spy)
    code = main(["--model", str(tiny_model_dir), "--video", str(example_face), "--audio", str(example_speech),
                 "--output", str(tmp_path / "out.mp4"), "--device", "cpu", "--scheduler", "dpm++", "--deep-cache", "3",
                 "--vae-slicing", "--compile", "--cpu-offload", "model", "--windows-per-batch", "2", "--fused-norm"])
    assert code == 0
    assert seen["scheduler"] == "DPMSolverMultistepScheduler" and seen["deep_cache_interval"] == 3
    assert seen["slicing"] and seen["compiled"] and seen["offload"] and seen["fused"]
    assert seen["windows_per_batch"] == 2


@pytest.mark.slow
def test_compiled_unet_gives_the_same_faces(pipe):
    window = _window(pipe)
    plain = _generate(pipe, window, steps=2)
    pipe.unet.compile(backend="eager")  # dynamo tracing of the frame-aware norms; inductor needs minutes here
    try:
        assert np.array_equal(_generate(pipe, window, steps=2), plain)
    finally:
        torch._dynamo.reset()
