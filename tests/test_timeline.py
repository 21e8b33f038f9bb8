"""The input's own timeline (``output_fps="input"``): every stored frame written at its timestamp, pixels outside the
mouth exactly the decoded input's, each frame's audio context taken at its time; other fixed rates."""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from conftest import ffmpeg
from latentsync import LatentSyncInputError
from latentsync.face import FaceDetector
from latentsync.media import load_audio, probe_video
from latentsync.media.timeline import read_timestamps

AUDIO_SECONDS = 0.7


def decode_with_times(path) -> tuple[np.ndarray, list[Fraction]]:
    """Every decoded frame of ``path`` (PyAV, as stored) and its exact presentation time from the first frame."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        decoded = [(frame.pts, frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
        tb = Fraction(stream.time_base)
    return np.stack([f for _, f in decoded]), [(pts - decoded[0][0]) * tb for pts, _ in decoded]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, example_face, example_speech):
    folder = tmp_path_factory.mktemp("timeline")
    out = {}
    for name, vf in (("30", "fps=30"), ("60", "fps=60"), ("vfr", "fps=30,select='not(eq(mod(n\\,5)\\,2))'")):
        out[name] = folder / f"face_{name}.mp4"
        ffmpeg("-i", os.fspath(example_face), "-t", "1", "-vf", vf, "-fps_mode", "vfr", "-c:v", "libx264",
               "-crf", "14", os.fspath(out[name]))
    out["speech"] = folder / "speech.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", str(AUDIO_SECONDS), os.fspath(out["speech"]))
    return out


def mouth_box(detector: FaceDetector, frame: np.ndarray) -> tuple[slice, slice]:
    """A generous box around the lower face of the (only) face in ``frame``."""
    box = detector.detect(frame)[0]
    size = box.size
    rows = slice(max(0, int(box.center[1] - 0.2 * size)), int(box.y1 + 0.6 * size))
    cols = slice(max(0, int(box.x0 - 0.3 * size)), int(box.x1 + 0.3 * size))
    return rows, cols


@pytest.mark.parametrize("name", ["30", "60", "vfr"])
def test_input_timeline_keeps_every_frame(tiny_pipe_64, clips, name, tmp_path):
    pipe, clip = tiny_pipe_64, clips[name]
    decoded, times = decode_with_times(clip)
    duration = Fraction(len(load_audio(clips["speech"])), 16000)
    expected = sum(t < duration for t in times)  # the frames the input shows during the speech
    contexts = []

    def grab(pipe, step, timestep, kwargs):
        if step == 0:
            contexts.append(kwargs["audio_embeds"].clone())
        return {}

    out_path = tmp_path / "out.mp4"
    out = pipe(clip, clips["speech"], output_path=out_path, return_frames=True, output_fps="input",
               num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
               callback_on_step_end=grab, callback_on_step_end_tensor_inputs=["audio_embeds"])

    # as many frames as the input covers over the audio, each at its own timestamp (in memory and in the file)
    assert out.num_frames == len(out.frames) == expected
    assert np.allclose(out.timestamps, [float(t) for t in times[:expected]], atol=1e-9)
    written, _ = read_timestamps(out_path)
    assert len(written) == expected and np.allclose(written, out.timestamps, atol=1e-9)
    assert probe_video(out_path).has_audio

    # every pixel outside the mouth is the decoded input frame at that timestamp; the mouth was regenerated
    changed = 0
    with FaceDetector() as detector:
        for i, frame in enumerate(out.frames):
            rows, cols = mouth_box(detector, decoded[i])
            outside = np.ones(frame.shape[:2], bool)
            outside[rows, cols] = False
            assert np.array_equal(frame[outside], decoded[i][outside]), f"frame {i} changed outside the mouth"
            changed += int((frame != decoded[i]).any())
    assert changed == expected

    # frame i's audio context is the 10 tokens (20 ms each) around the token that covers its timestamp
    features = pipe.encode_audio(load_audio(clips["speech"]))
    got = torch.cat(contexts)
    assert got.shape[0] == expected
    for i in range(expected):
        centre = int(times[i] * 50)  # exact: a rational time, floored
        idx = np.clip(np.arange(centre - 4, centre + 6), 0, features.shape[0] - 1)
        assert torch.equal(got[i], features[idx].reshape(-1, features.shape[-1])), f"frame {i}"


def test_fixed_output_rate(tiny_pipe_64, clips, tmp_path):
    out_path = tmp_path / "out30.mp4"
    out = tiny_pipe_64(clips["60"], clips["speech"], output_path=out_path, output_fps=30, num_inference_steps=1,
                       generator=torch.Generator().manual_seed(0))
    assert out.fps == 30 and out.num_frames == round(AUDIO_SECONDS * 30)
    assert np.allclose(out.timestamps, np.arange(out.num_frames) / 30)
    info = probe_video(out_path)
    assert info.fps == 30


def test_timeline_argument_errors(tiny_pipe_64, clips):
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(LatentSyncInputError, match="output_fps"):
        tiny_pipe_64(clips["30"], clips["speech"], output_fps=0)
    with pytest.raises(LatentSyncInputError, match="frames in memory"):
        tiny_pipe_64(frames, clips["speech"], output_fps="input")
    with pytest.raises(LatentSyncInputError, match="output_fps"):
        tiny_pipe_64(clips["30"], clips["speech"], output_fps="native")


# ---------------------------------------------------------------------------------------------------- display matrix
@pytest.fixture(scope="module")
def stored_picture(tmp_path_factory):
    """Three frames of ffmpeg's test picture (no two of its mirror images or rotations alike), 64 x 48, no display
    matrix; and those frames as decoded."""
    from latentsync.media import iter_frames

    path = tmp_path_factory.mktemp("display") / "stored.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", os.fspath(path))
    return path, np.stack(list(iter_frames(path, None)))


def displayed(frames: np.ndarray, degrees: int, flips: tuple[str, ...]) -> np.ndarray:
    """``frames`` as ffmpeg documents its display options: turned ``degrees`` counter-clockwise, then flipped."""
    out = np.rot90(frames, degrees // 90, axes=(1, 2))
    if "hflip" in flips:
        out = out[:, :, ::-1]
    if "vflip" in flips:
        out = out[:, ::-1]
    return out


@pytest.mark.parametrize("flips", [(), ("hflip",), ("vflip",), ("hflip", "vflip")],
                         ids=lambda flips: "+".join(flips) or "no flip")
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_both_readers_apply_the_display_matrix(stored_picture, tmp_path, degrees, flips):
    """A display matrix that turns and mirrors (a phone's front camera): the probe reports both, and the 25 fps
    reader (ffmpeg's autorotate) and the input-timeline reader (PyAV, turned and mirrored here) give the same
    frames, pixel for pixel, as players show them."""
    from latentsync.media import iter_frames
    from latentsync.media.timeline import iter_stored_frames

    source, stored = stored_picture
    path = tmp_path / "phone.mp4"
    ffmpeg("-display_rotation", str(degrees), *(f"-display_{flip}" for flip in flips), "-i", os.fspath(source),
           "-c", "copy", os.fspath(path))
    expected = displayed(stored, degrees, flips)
    info = probe_video(path)
    # a vertical flip is a half turn and a mirror, so both flips are a half turn
    turn = degrees + 180 * ("vflip" in flips)  # counter-clockwise, before the mirror
    assert (info.rotation, info.mirrored) == (-turn % 360, len(flips) == 1)
    assert (info.height, info.width) == expected.shape[1:3]
    np.testing.assert_array_equal(np.stack(list(iter_frames(path))), expected)  # the 25 fps reader
    np.testing.assert_array_equal(np.stack(list(iter_stored_frames(path))), expected)


@pytest.mark.parametrize("container,codec", [("mkv", "libx264"), ("webm", "libvpx")])
def test_mirror_read_from_other_containers(tmp_path, container, codec):
    """The matrix of a Matroska file, and of a codec a MOV header cannot hold (VP8: one frame is decoded to read
    it), is read as in an MP4."""
    from latentsync.media import iter_frames
    from latentsync.media.timeline import iter_stored_frames

    source, path = tmp_path / f"stored.{container}", tmp_path / f"phone.{container}"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", codec, os.fspath(source))
    ffmpeg("-display_rotation", "90", "-display_hflip", "-i", os.fspath(source), "-c", "copy", os.fspath(path))
    info = probe_video(path)
    assert (info.rotation, info.mirrored, info.width, info.height) == (270, True, 48, 64)
    expected = displayed(np.stack(list(iter_frames(source, None))), 90, ("hflip",))
    np.testing.assert_array_equal(np.stack(list(iter_frames(path))), expected)
    np.testing.assert_array_equal(np.stack(list(iter_stored_frames(path))), expected)


def test_input_timeline_with_a_chosen_audio_track(tiny_pipe_64, clips, tmp_path, caplog):
    """``--fps input --audio-track 2`` with a speech file whose two tracks are equally loud (the automatic choice
    keeps track 1): the lips follow track 2 (the same frames as a run on track 2 alone) and the file written on the
    input's timeline carries track 2, not the first."""
    from latentsync.media.audio import copy_track, speech_track

    two = tmp_path / "two.mka"  # track 1 the speech, track 2 the same speech backwards: same level, other sound
    ffmpeg("-i", os.fspath(clips["speech"]), "-filter_complex", "[0:a]asplit[a][b];[b]areverse[r]", "-map", "[a]",
           "-map", "[r]", "-c:a", "pcm_s16le", os.fspath(two))
    assert speech_track(two).index == 0
    second = copy_track(two, 1, tmp_path / "second.mka")
    kwargs = {"output_fps": "input", "num_inference_steps": 1, "guidance_scale": 1.0}
    out_path = tmp_path / "out.mp4"
    with caplog.at_level(logging.INFO, logger="latentsync"):
        out = tiny_pipe_64(clips["30"], two, output_path=out_path, return_frames=True, audio_track=2,
                           generator=torch.Generator().manual_seed(0), **kwargs)
    assert f"{two}: the speech is read from audio track 2, as chosen" in caplog.text
    alone = tiny_pipe_64(clips["30"], second, generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(out.frames, alone.frames)
    written, _ = read_timestamps(out_path)
    assert len(written) == out.num_frames and np.allclose(written, out.timestamps, atol=1e-9)
    assert probe_video(out_path).audio_tracks == 1
    sound = load_audio(out_path)
    n = min(len(sound), len(load_audio(second))) - 500  # AAC's padding at the ends

    def correlation(reference):
        return float(np.corrcoef(sound[500:n], load_audio(reference)[500:n])[0, 1])

    assert correlation(second) > 0.95 and abs(correlation(clips["speech"])) < 0.5


def test_a_timed_video_is_probed_once(clips, monkeypatch):
    """``open_timed_frames`` probes the file once and hands the probe to every read of its frames (it probed it
    again in each read: three ffmpeg probes for the two passes of a run)."""
    from latentsync.media import timeline

    probes = []
    probe = timeline.probe_video

    def counted(path):
        probes.append(path)
        return probe(path)

    monkeypatch.setattr(timeline, "probe_video", counted)
    source = timeline.open_timed_frames(clips["30"])
    first, second = list(source), list(source)  # the two passes of a run
    assert len(first) == len(second) == len(source.timestamps) == 30
    assert len(probes) == 1
