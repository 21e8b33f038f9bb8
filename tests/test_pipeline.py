"""End-to-end tests of LatentSyncPipeline with a tiny random model on real and synthetic clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import decode, ffmpeg, psnr, write_video, write_wav
from latentsync import InvalidAudioError, InvalidVideoError, LatentSyncPipeline, NoFaceError
from latentsync.media import load_audio
from latentsync.face import FaceDetector
from latentsync.media import probe_video

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


def test_missing_video(tiny_pipe, speech_file, tmp_path):
    _expect(tiny_pipe, InvalidVideoError, "not found", tmp_path / "nope.mp4", speech_file, tmp_path)


def test_not_a_video(tiny_pipe, speech_file, tmp_path):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n")
    _expect(tiny_pipe, InvalidVideoError, "cannot read video", bogus, speech_file, tmp_path)


def test_empty_video_file(tiny_pipe, speech_file, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _expect(tiny_pipe, InvalidVideoError, "empty", empty, speech_file, tmp_path)


def test_video_without_frames(tiny_pipe, speech_file, tmp_path):
    audio_only = tmp_path / "audio_only.mp4"
    ffmpeg("-i", os.fspath(speech_file), "-c:a", "aac", os.fspath(audio_only))
    _expect(tiny_pipe, InvalidVideoError, "no video stream", audio_only, speech_file, tmp_path)


def test_video_without_face(tiny_pipe, speech_file, tmp_path):
    gray = write_video(tmp_path / "gray.mp4", [np.full((128, 128, 3), 90, np.uint8)] * 10)
    _expect(tiny_pipe, NoFaceError, "no face", gray, speech_file, tmp_path)


def test_silent_audio(tiny_pipe, example_face, tmp_path):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16000))
    _expect(tiny_pipe, InvalidAudioError, "silent", example_face, silent, tmp_path)


def test_empty_audio(tiny_pipe, example_face, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    _expect(tiny_pipe, InvalidAudioError, "empty", example_face, empty, tmp_path)


def test_audio_without_audio_stream(tiny_pipe, example_face, tmp_path):
    _expect(tiny_pipe, InvalidAudioError, "no audio stream", example_face, example_face, tmp_path)


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
