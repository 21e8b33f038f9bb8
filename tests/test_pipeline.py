"""End-to-end tests of LatentSyncPipeline with a tiny random model on real and synthetic clips: output, looping,
frames without a face, saving, input errors, and the diffusers conventions (callbacks, interrupt, output_type,
return_dict, latents, argument checks)."""

from __future__ import annotations

import os

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from conftest import decode, ffmpeg, psnr, write_video, write_wav
from latentsync import InvalidAudioError, InvalidVideoError, LatentSyncInputError, LatentSyncPipeline, NoFaceError
from latentsync.face import FaceDetector
from latentsync.media import load_audio, probe_video

STEPS = 2


def _run(pipe, video, audio, out=None, **kw):
    return pipe(video=video, audio=audio, output_path=out, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), **kw)


def _no_leftovers(directory):
    return [p for p in os.listdir(directory) if "partial" in p]


def test_real_clip_end_to_end(tiny_pipe, real_clip, real_speech, tmp_path):
    out_path = tmp_path / "out.mp4"
    result = _run(tiny_pipe, real_clip, real_speech, out_path, return_frames=True)
    assert result.path == os.fspath(out_path) and out_path.is_file()
    assert result.fps == 25 and result.frames_without_face == 0

    speech = load_audio(real_speech)
    out_frames = decode(out_path, fps=None)
    assert len(out_frames) == result.num_frames == result.frames.shape[0]
    assert abs(len(out_frames) / 25 - len(speech) / 16000) <= 1 / 25 + 1e-6  # duration follows the audio

    info = probe_video(out_path)
    assert info.has_audio and (info.width, info.height) == (540, 960)
    muxed = load_audio(out_path)  # the new speech, not the clip's own audio
    n = min(len(muxed), len(speech))
    assert abs(len(muxed) - len(speech)) < 0.1 * 16000
    assert np.corrcoef(muxed[:n], speech[:n])[0, 1] > 0.9

    source = decode(real_clip)[: len(out_frames)]
    with FaceDetector() as det:
        box = det.detect(source[0])[0]
    size = box.size
    far = np.ones(source.shape[1:3], bool)
    far[max(0, int(box.y0 - size)) : int(box.y1 + size), :] = False
    assert psnr(out_frames[:, far], source[:, far]) > 38  # untouched away from the face (codec only)
    mouth = (slice(int(box.center[1]), int(box.y1)), slice(int(box.x0 + size / 4), int(box.x1 - size / 4)))
    assert psnr(out_frames[:, mouth[0], mouth[1]], source[:, mouth[0], mouth[1]]) < 30  # regenerated mouth


def test_synthetic_clip_loops_pingpong(tiny_pipe, example_face, example_speech, tmp_path):
    out_path = tmp_path / "loop.mp4"
    result = _run(tiny_pipe, example_face, example_speech, out_path)
    source = decode(example_face)
    n_src = len(source)
    speech_frames = len(load_audio(example_speech)) / 16000 * 25
    assert n_src < speech_frames and abs(result.num_frames - speech_frames) <= 1
    out = decode(out_path, fps=None)
    assert len(out) == result.num_frames
    top = slice(0, 40)  # the image's top rows are far from the face
    k = n_src + 5  # second pass runs backwards: output frame n+5 shows source frame n-6
    assert psnr(out[k, top], source[n_src - 6, top]) > 35
    assert psnr(out[k, top], source[5, top]) < psnr(out[k, top], source[n_src - 6, top])


def test_frames_without_face_pass_through(tiny_pipe, example_face, example_speech, tmp_path):
    frames = list(decode(example_face)[:30])
    blank = np.full_like(frames[0], 128)
    frames[10:18] = [blank] * 8
    video = write_video(tmp_path / "gap.mp4", frames)
    audio = tmp_path / "speech.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", "1.2", os.fspath(audio))
    result = _run(tiny_pipe, video, audio, return_frames=True)
    assert result.num_frames == 30 and result.frames_without_face == 8
    source = decode(video)
    for i in range(10, 18):
        assert np.array_equal(result.frames[i], source[i])
    assert psnr(result.frames[5], source[5]) < 60  # faces around the gap were regenerated


def test_a_longer_video_is_analysed_only_as_far_as_the_output_reaches(tiny_pipe, example_face, one_window,
                                                                         monkeypatch):
    """16 output frames of the 75-frame example: the first pass reads 16 frames plus the landmark smoothing's reach
    (5 frames at sigma 1.5), and the frames equal those of a pass over the whole video (face_index reads it all)."""
    from latentsync.face.tracking import FaceTracker

    analysed = []
    result = FaceTracker.result
    monkeypatch.setattr(FaceTracker, "result", lambda self, *a: analysed.append(self.num_frames) or result(self, *a))
    short = _run(tiny_pipe, example_face, one_window).frames
    whole = _run(tiny_pipe, example_face, one_window, face_index=0).frames
    assert analysed == [21, 75]
    assert short.shape[0] == 16 and np.array_equal(short, whole)


def test_save_load_round_trip_identical(tiny_model_dir, tiny_pipe, example_face, tmp_path):
    audio = tmp_path / "short.wav"
    t = np.arange(int(0.4 * 16000)) / 16000
    write_wav(audio, 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t))
    first = _run(tiny_pipe, example_face, audio).frames
    tiny_pipe.save_pretrained(tmp_path / "saved")
    reloaded = LatentSyncPipeline.from_pretrained(tmp_path / "saved")
    reloaded.set_progress_bar_config(disable=True)
    second = _run(reloaded, example_face, audio).frames
    assert first.shape == second.shape and np.array_equal(first, second)
    assert (tmp_path / "saved" / "README.md").is_file()


@pytest.fixture
def speech_file(tmp_path):
    t = np.arange(16000) / 16000
    return write_wav(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 200 * t))


def _expect(pipe, exc, match, video, audio, tmp_path):
    out = tmp_path / "out" / "result.mp4"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(exc, match=match):
        _run(pipe, video, audio, out)
    assert not out.exists() and _no_leftovers(out.parent) == []


def _text_file(path, text: str):
    path.write_text(text)
    return path


def _audio_only(path, speech):
    ffmpeg("-i", os.fspath(speech), "-c:a", "aac", os.fspath(path))
    return path


# case -> (make (folder, speech, face) -> (video, audio), error, message)
BAD_INPUTS = {
    "missing video": (lambda d, s, f: (d / "nope.mp4", s), InvalidVideoError, "not found"),
    "not a video": (lambda d, s, f: (_text_file(d / "notes.mp4", "this is not a video\n"), s), InvalidVideoError,
                    "cannot read video"),
    "empty video file": (lambda d, s, f: (_text_file(d / "empty.mp4", ""), s), InvalidVideoError, "empty"),
    "video without frames": (lambda d, s, f: (_audio_only(d / "audio_only.mp4", s), s), InvalidVideoError,
                             "no video stream"),
    "video without face": (lambda d, s, f: (write_video(d / "gray.mp4", [np.full((128, 128, 3), 90, np.uint8)] * 10),
                                            s), NoFaceError, "no face"),
    "silent audio": (lambda d, s, f: (f, write_wav(d / "silent.wav", np.zeros(16000))), InvalidAudioError, "silent"),
    "empty audio": (lambda d, s, f: (f, _text_file(d / "empty.wav", "")), InvalidAudioError, "empty"),
    "audio without audio stream": (lambda d, s, f: (f, f), InvalidAudioError, "no audio stream"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_a_clear_error_and_leave_nothing(case, tiny_pipe, speech_file, example_face, tmp_path):
    make, error, message = BAD_INPUTS[case]
    video, audio = make(tmp_path, speech_file, example_face)
    _expect(tiny_pipe, error, message, video, audio, tmp_path)


def test_unsupported_output_format(tiny_pipe, example_face, speech_file, tmp_path):
    with pytest.raises(InvalidVideoError, match="unsupported output format"):
        _run(tiny_pipe, example_face, speech_file, tmp_path / "out.gif")


def test_overlapped_and_sequential_stages_give_identical_frames(tiny_pipe, example_face, tmp_path):
    t = np.arange(int(1.5 * 16000)) / 16000
    audio = write_wav(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 150 * t) * np.sin(2 * np.pi * 2 * t))
    overlapped = _run(tiny_pipe, example_face, audio, overlap_stages=True)
    sequential = _run(tiny_pipe, example_face, audio, overlap_stages=False)
    assert overlapped.num_frames == 38 and np.array_equal(overlapped.frames, sequential.frames)
    for stage in ("audio_features", "decode", "face_detection", "alignment", "vae_encode", "denoise", "vae_decode",
                  "paste_back", "total"):
        assert overlapped.timings[stage] > 0


# ---------------------------------------------------------------------------------------------------- diffusers API
@pytest.fixture(scope="module")
def two_windows(example_speech, tmp_path_factory):
    """1.28 s of speech: 32 output frames, two 16-frame windows."""
    out = tmp_path_factory.mktemp("speech") / "two_windows.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", "1.28", os.fspath(out))
    return out


def _unet_calls(pipe):
    calls = []
    return calls, pipe.unet.register_forward_hook(lambda *_: calls.append(1))


def test_callback_sees_every_step_and_can_replace_the_latents(tiny_pipe, example_face, two_windows):
    seen = []

    def watch(pipe, step, timestep, kwargs):
        seen.append((step, int(timestep), sorted(kwargs), kwargs["latents"].shape))
        return kwargs

    plain = _run(tiny_pipe, example_face, two_windows, callback_on_step_end=watch,
                 callback_on_step_end_tensor_inputs=["latents", "audio_embeds", "condition_latents"])
    assert [s[0] for s in seen] == [0, 1, 0, 1]  # two steps in each of the two windows
    assert seen[0][2] == ["audio_embeds", "condition_latents", "latents"] and seen[0][3][2] == 16
    assert plain.frames.shape[0] == 32 and tiny_pipe.num_timesteps == STEPS

    def flatten_last_step(pipe, step, timestep, kwargs):
        if step == pipe.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    changed = _run(tiny_pipe, example_face, two_windows, callback_on_step_end=flatten_last_step)
    assert changed.frames.shape == plain.frames.shape and not np.array_equal(changed.frames, plain.frames)
    unchanged = _run(tiny_pipe, example_face, two_windows, callback_on_step_end=lambda p, i, t, kw: kw)
    assert np.array_equal(unchanged.frames, plain.frames)


def test_interrupt_stops_after_the_current_window(tiny_pipe, example_face, two_windows, tmp_path):
    def stop(pipe, step, timestep, kwargs):
        pipe._interrupt = True
        return kwargs

    calls, hook = _unet_calls(tiny_pipe)
    try:
        out = _run(tiny_pipe, example_face, two_windows, tmp_path / "short.mp4", callback_on_step_end=stop,
                   return_frames=True)
    finally:
        hook.remove()
    assert len(calls) == 1  # one U-Net pass (guidance batches both halves), then nothing more
    assert out.num_frames == 16 and out.frames.shape[0] == 16 and out.frames_without_face == 0
    assert len(decode(tmp_path / "short.mp4", fps=None)) == 16
    # the file's sound ends with its picture (not the rest of the speech over a frozen frame)
    assert abs(probe_video(tmp_path / "short.mp4").duration - 0.64) < 0.1
    assert len(load_audio(tmp_path / "short.mp4")) / 16000 < 0.64 + 0.1
    assert _no_leftovers(tmp_path) == []
    assert _run(tiny_pipe, example_face, two_windows).num_frames == 32  # the next call runs in full


def test_output_types_and_return_dict(tiny_pipe, example_face, one_window, tmp_path):
    arrays = _run(tiny_pipe, example_face, one_window).frames
    assert isinstance(arrays, np.ndarray) and arrays.dtype == np.uint8 and arrays.shape == (16, 384, 384, 3)
    images = _run(tiny_pipe, example_face, one_window, output_type="pil").frames
    assert len(images) == 16 and isinstance(images[0], PIL.Image.Image) and images[0].size == (384, 384)
    assert np.array_equal(np.asarray(images[5]), arrays[5])
    tensors = _run(tiny_pipe, example_face, one_window, output_type="pt").frames
    assert tensors.shape == (16, 3, 384, 384) and tensors.dtype == torch.float32
    assert torch.equal(tensors, torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255)
    frames, path = _run(tiny_pipe, example_face, one_window, tmp_path / "o.mp4", output_type="file", return_dict=False)
    assert frames is None and path == os.fspath(tmp_path / "o.mp4") and os.path.isfile(path)
    frames, path = _run(tiny_pipe, example_face, one_window, return_dict=False)
    assert path is None and np.array_equal(frames, arrays)


def test_given_latents_replace_the_drawn_noise(tiny_pipe, example_face, one_window):
    drawn = _run(tiny_pipe, example_face, one_window).frames
    generator = torch.Generator().manual_seed(0)  # _run's seed
    noise = randn_tensor((1, 4, 1, 32, 32), generator=generator, dtype=tiny_pipe.unet.dtype)
    given = tiny_pipe(example_face, one_window, num_inference_steps=STEPS, generator=generator, latents=noise).frames
    assert np.array_equal(given, drawn)  # the same noise, and the VAE samples drawn after it


class _CudaGenerator(torch.Generator):
    """A generator that says it is on CUDA (this machine has none to make a real one)."""

    device = property(lambda self: torch.device("cuda"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
    (dict(num_frames=0), "num_frames"),
    (dict(num_frames=25), "num_frames must be an integer between 1 and 24"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(face_index=-1), "face_index"),
    (dict(crf=60), "crf"),
    (dict(audio_window_mode="sliding"), "audio_window_mode"),
    (dict(output_type="gif"), "output_type"),
    (dict(output_type="file"), "needs an output_path"),
    (dict(latents=torch.zeros(1, 4, 16, 32, 32)), "latents must have shape"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "noise_pred"),
    (dict(deep_cache_interval=2, deep_cache_branch=9), "deep_cache_branch"),
    (dict(generator=0), "generator must be a torch.Generator or None, got int"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "generator must be one torch.Generator"),
    (dict(generator=_CudaGenerator()), r"generator is on cuda but the pipeline runs on cpu: use torch.Generator\("),
    (dict(latents=np.zeros((1, 4, 1, 32, 32), np.float32)), "latents must be a torch.Tensor, got ndarray"),
    (dict(callback_on_step_end=5), "callback_on_step_end must be a function"),
    (dict(callback_on_step_end_tensor_inputs="latents"), "must be a list of tensor names"),
    (dict(output_path=5), "output_path must be a file path or None, got int"),
])
def test_arguments_are_checked_before_any_work(tiny_pipe, example_face, speech_file, kwargs, message, monkeypatch):
    import latentsync.pipeline

    def no_work(*args, **kw):
        raise AssertionError("the inputs were opened before the arguments were checked")

    monkeypatch.setattr(latentsync.pipeline, "open_frames", no_work)
    with pytest.raises(LatentSyncInputError, match=message):
        tiny_pipe(example_face, speech_file, **{"num_inference_steps": STEPS, **kwargs})


@pytest.mark.parametrize("video, message", [
    (5, "video must be a file path, an RGB array .* got int"),
    ({"frames": []}, "video must be a file path, .* got dict"),
])
def test_a_video_of_the_wrong_type_is_named(tiny_pipe, speech_file, video, message):
    with pytest.raises(LatentSyncInputError, match=message):
        tiny_pipe(video, speech_file, num_inference_steps=STEPS)


def test_diffusers_callback_objects_get_their_tensor_inputs(tiny_pipe, example_face, one_window):
    """A diffusers ``PipelineCallback`` (and ``MultiPipelineCallbacks``) names its tensors in ``tensor_inputs``: the
    call gives it those, as diffusers' pipelines do; a list of one generator is that generator."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    seen = []

    class AudioWatcher(PipelineCallback):
        tensor_inputs = ("latents", "audio_embeds")

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            seen.append(sorted(callback_kwargs))
            return callback_kwargs

    plain = _run(tiny_pipe, example_face, one_window).frames
    watched = _run(tiny_pipe, example_face, one_window, callback_on_step_end=AudioWatcher()).frames
    assert seen == [["audio_embeds", "latents"]] * STEPS and np.array_equal(watched, plain)
    seen.clear()
    both = MultiPipelineCallbacks([AudioWatcher()])
    listed = tiny_pipe(example_face, one_window, num_inference_steps=STEPS, callback_on_step_end=both,
                       generator=[torch.Generator().manual_seed(0)]).frames
    assert seen == [["audio_embeds", "latents"]] * STEPS and np.array_equal(listed, plain)


def test_a_callback_that_returns_nothing_is_named_and_leaves_no_output(tiny_pipe, example_face, one_window, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(LatentSyncInputError, match="callback_on_step_end must return its callback_kwargs dict"):
        _run(tiny_pipe, example_face, one_window, out, callback_on_step_end=lambda pipe, step, t, kwargs: None)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_frames_and_samples_in_diffusers_forms(tiny_pipe_64, example_face, one_window):
    """The frames of ``output_type="pt"`` (float (T, 3, H, W) in [0, 1], as diffusers' video pipelines return) go back
    in as a video, and int16 stereo samples as audio: the same output as uint8 frames and float mono samples."""
    from latentsync.media import load_audio
    from latentsync.media.video import iter_frames

    frames = np.stack(list(iter_frames(example_face)))[:16]
    speech = load_audio(one_window)
    plain = _run(tiny_pipe_64, frames, speech).frames
    as_pt = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    pcm_stereo = np.round(np.stack([speech, speech], axis=1) * 32768).clip(-32768, 32767).astype(np.int16)
    again = _run(tiny_pipe_64, as_pt, pcm_stereo)
    assert np.abs(again.frames.astype(int) - plain.astype(int)).max() <= 2
    with pytest.raises(LatentSyncInputError, match="datasets Audio dict"):
        _run(tiny_pipe_64, frames, {"array": speech, "sampling_rate": 16000, "path": None})


def test_calls_from_two_threads_take_turns(tiny_pipe_64, example_face, one_window):
    """Two threads calling one pipeline with different step counts get the frames each gets alone: the second
    waits for the first instead of resetting the shared scheduler's timesteps under it."""
    import threading

    alone = {steps: tiny_pipe_64(example_face, one_window, num_inference_steps=steps,
                                 generator=torch.Generator().manual_seed(0)).frames for steps in (2, 3)}
    second_started, results = threading.Event(), {}

    def note_start(pipe, step, timestep, kwargs):
        second_started.set()
        return kwargs

    def second_call():
        results[2] = tiny_pipe_64(example_face, one_window, num_inference_steps=2, callback_on_step_end=note_start,
                                  generator=torch.Generator().manual_seed(0)).frames

    thread = threading.Thread(target=second_call)

    def start_second_and_wait(pipe, step, timestep, kwargs):
        if step == 0:
            thread.start()
            second_started.wait(timeout=5)  # before: the other call set its own timesteps meanwhile
        return kwargs

    results[3] = tiny_pipe_64(example_face, one_window, num_inference_steps=3,
                              callback_on_step_end=start_second_and_wait,
                              generator=torch.Generator().manual_seed(0)).frames
    thread.join()
    assert np.array_equal(results[2], alone[2]) and np.array_equal(results[3], alone[3])


def test_to_refuses_keywords_that_diffusers_would_ignore(tiny_pipe):
    """``pipe.to(torch_dtype=torch.float16)`` left the pipeline in float32 without a word (diffusers drops unknown
    keywords); now it names the keyword. The usual forms still work."""
    with pytest.raises(TypeError, match="unexpected keyword torch_dtype: pass the dtype as dtype="):
        tiny_pipe.to(torch_dtype=torch.float16)
    assert tiny_pipe.unet.dtype == torch.float32
    assert tiny_pipe.to("cpu", dtype=torch.float32) is tiny_pipe and tiny_pipe.to(torch.float32) is tiny_pipe


@pytest.mark.parametrize("length", [1, 160, 300])
def test_audio_shorter_than_one_whisper_token_is_named(tiny_pipe_64, example_face, length):
    """Audio of at most 200 samples failed deep inside torch's STFT padding ("Padding size should be less than the
    corresponding input dimension"); now every length under one token (320 samples) gets the same one-line error."""
    tone = (0.5 * np.sin(np.arange(length) / 3.0) + 0.25).astype(np.float32)
    with pytest.raises(InvalidAudioError, match=f"too short to compute any features: {length} samples"):
        _run(tiny_pipe_64, example_face, tone)
