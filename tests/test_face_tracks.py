"""Several faces: tracks through the video (crossings, gaps, scene cuts), the speaking face chosen from the video's
own soundtrack, a voice per face, and the ``latentsync faces`` command.

The real-clip tests put the two shared clips side by side (each face cropped to 360 x 360, 720 x 360 in all), with
the sound of one of them, so that one face is speaking and the other is moving its lips to words nobody hears.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import decode, ffmpeg, shared_file, write_wav
from latentsync import LatentSyncInputError, LatentSyncPipeline
from latentsync.commands import main
from latentsync.commands.run import face_choice, voice
from latentsync.eval.sync_confidence import offset_confidence
from latentsync.face import FaceAligner, FaceTrack, FaceTracks, select_faces, track_faces
from latentsync.face.choice import check_face_arguments
from latentsync.face.detection import FaceBox
from latentsync.face.selection import choose_faces
from latentsync.face.speaking import LIP_RULE, frame_loudness, lip_score, syncnet_scores
from latentsync.face.tracking import combined_anchors
from latentsync.media import fit_length, load_audio, mix_tracks, num_video_frames, open_frames
from latentsync.media.shots import ShotDetector, shot_ranges
from latentsync.testing import build_tiny_syncnet, concat_clips, crop_faces, side_by_side_clip

STEPS = 1
SIDE = 360


# ---------------------------------------------------------------------------------------------------- clips
@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> dict[tuple[str, str], str]:
    """Each shared clip's face, close and wide, 360 x 360 with the clip's own sound (the first 12 s)."""
    videos = {name: shared_file(f"{name}_video.mp4") for name in ("demo1", "demo2")}
    return crop_faces(videos, os.fspath(tmp_path_factory.mktemp("face_crops")), 12, SIDE)


def side_by_side(crops, path: Path, left: str, right: str, sound: str, starts: tuple[float, float, float],
                 seconds: float, framing: str = "close") -> Path:
    clips = (crops[left, framing], crops[right, framing], crops[sound, framing])
    return Path(side_by_side_clip(os.fspath(path), *clips, starts, seconds))


@pytest.fixture(scope="module")
def two_speakers(crops, tmp_path_factory) -> dict[str, Path]:
    """``cut``: 6 s of demo1 | demo2 with demo1's sound, then a cut to a wider framing with demo2's sound (6 s);
    ``swapped``: 6 s of demo2 | demo1 with demo1's sound; ``short_cut``: 1 s of each shot of ``cut``."""
    folder = tmp_path_factory.mktemp("two_speakers")
    first = side_by_side(crops, folder / "first.mp4", "demo1", "demo2", "demo1", (0, 0, 0), 6)
    second = side_by_side(crops, folder / "second.mp4", "demo1", "demo2", "demo2", (4, 6, 6), 6, "wide")
    first_short = side_by_side(crops, folder / "first_short.mp4", "demo1", "demo2", "demo1", (0, 0, 0), 1)
    second_short = side_by_side(crops, folder / "second_short.mp4", "demo1", "demo2", "demo2", (4, 6, 6), 1, "wide")
    return {"cut": Path(concat_clips(folder / "cut.mp4", [first, second])),
            "swapped": side_by_side(crops, folder / "swapped.mp4", "demo2", "demo1", "demo1", (0, 0, 0), 6),
            "short_cut": Path(concat_clips(folder / "short_cut.mp4", [first_short, second_short]))}


@pytest.fixture(scope="module")
def cut_tracks(two_speakers) -> FaceTracks:
    return track_faces(open_frames(two_speakers["cut"]), "cut.mp4")


# ---------------------------------------------------------------------------------------------------- shots
def test_shot_detector_finds_a_hard_cut_and_ignores_a_flash():
    rng = np.random.default_rng(0)

    def frames(color, n):
        return [np.clip(np.full((90, 160, 3), color) + rng.normal(0, 3, (90, 160, 3)), 0, 255).astype(np.uint8)
                for _ in range(n)]

    video = frames((200, 40, 40), 20) + frames((30, 60, 220), 8) + frames((240, 240, 240), 3) \
        + frames((30, 60, 220), 19)
    detector = ShotDetector(min_shot_frames=15)
    starts = [i for i, frame in enumerate(video) if detector.update(frame)]
    assert starts == [20]  # the white flash at 28 comes too soon after the cut to start a shot
    assert detector.shots() == [(0, 20), (20, 50)]
    assert shot_ranges([], 5) == [(0, 5)] and shot_ranges([0, 3, 3, 9], 5) == [(0, 3), (3, 5)]


# ---------------------------------------------------------------------------------------------------- tracks
def test_one_face_is_one_track_through_the_whole_clip(example_face):
    tracks = track_faces(decode(example_face))
    assert len(tracks) == 1 and tracks.shots == [(0, tracks.num_frames)]
    [track] = tracks
    assert track.frames.tolist() == list(range(tracks.num_frames)) and track.has_landmarks
    assert track.boxes.shape == (tracks.num_frames, 4) and track.thumbnail.size == (128, 128)
    assert np.isfinite(track.anchors).all() and np.isfinite(track.lips).all()


def test_tracks_survive_two_faces_crossing(crops):
    """Two real faces swap sides over 1 s, one passing in front of the other (which is hidden for a few frames)."""
    left = [cv2.resize(f, (180, 180), interpolation=cv2.INTER_AREA) for f in decode(crops["demo1", "close"])[:45]]
    right = [cv2.resize(f, (180, 180), interpolation=cv2.INTER_AREA) for f in decode(crops["demo2", "close"])[:45]]
    frames = []
    for i in range(45):
        t = min(max(i - 10, 0), 25) / 25  # still for 10 frames, cross in 25 (1 s), still for 10
        xa, xb = int(60 + 420 * t), int(480 - 420 * t)
        frame = np.full((SIDE, 720, 3), (200, 180, 200), np.uint8)
        frame[100:280, xb : xb + 180] = right[i]  # behind
        frame[120:300, xa : xa + 180] = left[i]  # in front
        frames.append(frame)
    tracks = track_faces(frames, workers=1)
    assert len(tracks) == 2, tracks.describe()
    a, b = tracks
    centre = lambda track, k: track.boxes[k, 0] + track.boxes[k, 2] / 2  # noqa: E731
    assert centre(a, 0) < 360 < centre(b, 0)  # track 0 starts on the left...
    assert centre(a, -1) > 360 > centre(b, -1)  # ...and ends on the right
    assert a.last_frame >= 40 and b.last_frame >= 40
    hidden = set(range(45)) - set(b.frames.tolist())
    assert hidden and min(hidden) >= 15 and max(hidden) <= 30  # b was lost only while a passed in front
    # faces detected ahead in worker threads: the same tracks as one frame at a time
    for serial, parallel in zip(tracks, track_faces(frames, workers=3)):
        assert np.array_equal(serial.frames, parallel.frames) and np.array_equal(serial.anchors, parallel.anchors)
        assert np.array_equal(serial.boxes, parallel.boxes)


def test_a_scene_cut_starts_new_tracks_and_the_sheet_shows_them(cut_tracks):
    assert len(cut_tracks.shots) == 2 and abs(cut_tracks.shots[1][0] - 150) <= 3
    assert [t.shot for t in cut_tracks] == [0, 0, 1, 1]
    cut = cut_tracks.shots[1][0]
    assert all(t.last_frame < cut for t in cut_tracks.in_shot(0)) and all(t.first_frame >= cut
                                                                          for t in cut_tracks.in_shot(1))
    centres = [t.boxes[:, 0].mean() + t.boxes[:, 2].mean() / 2 for t in cut_tracks]
    assert centres[0] < 360 < centres[1] and centres[2] < 360 < centres[3]  # numbered left to right in each shot
    sheet = cut_tracks.contact_sheet()
    assert sheet.size == (4 * 160, 160 + 34)
    record = cut_tracks.to_dict()
    assert [t["index"] for t in record["tracks"]] == [0, 1, 2, 3] and record["shots"] == [list(s)
                                                                                          for s in cut_tracks.shots]
    assert len(record["tracks"][0]["boxes"][0]) == 4


# ---------------------------------------------------------------------------------------------------- speaking
def _shots(out) -> list[tuple[int | None, str]]:
    return [(s.track, s.rule) for s in out.faces]


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    """0.64 s (one window) of the demo2 speech track."""
    path = tmp_path_factory.mktemp("speech") / "short.wav"
    ffmpeg("-i", os.fspath(shared_file("demo2_audio.wav")), "-ss", "1", "-t", "0.64", os.fspath(path))
    return path


def test_speaking_face_is_chosen_in_each_shot_and_follows_the_cut(two_speakers, cut_tracks):
    chosen = choose_faces(cut_tracks, open_frames(two_speakers["cut"]), face="speaking")
    # shot 0: demo1 (left) speaks; shot 1, after the cut: demo2 (right) speaks
    assert [(s.track, s.rule) for s in chosen.shots] == [(0, "speaking"), (3, "speaking")]
    assert [t.index for t in chosen.voices[0]] == [0, 3]
    first, second = chosen.shots
    assert first.scores[0] >= LIP_RULE.min_score and first.scores[0] - first.scores[1] >= LIP_RULE.min_margin
    assert second.scores[3] >= LIP_RULE.min_score and second.scores[3] - second.scores[2] >= LIP_RULE.min_margin
    assert (first.start, second.end) == (0, cut_tracks.num_frames) and first.end == second.start


def test_the_pipeline_lip_syncs_the_speaking_face_on_either_side(tiny_pipe_64, two_speakers, short_speech):
    out = tiny_pipe_64(two_speakers["swapped"], short_speech, face="speaking", num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(0))
    assert _shots(out) == [(1, "speaking")]  # demo2 | demo1 with demo1's sound: the right face speaks
    scores = out.faces[0].scores
    assert scores[1] >= LIP_RULE.min_score and scores[1] - scores[0] >= LIP_RULE.min_margin
    assert out.num_frames == 16 and out.frames_without_face == 0
    changed = np.abs(out.frames.astype(int) - decode(two_speakers["swapped"])[:16]).sum(-1) > 0
    assert changed[:, :, SIDE:].any() and not changed[:, :, :SIDE].any()  # only the right face was regenerated


def test_default_and_index_choose_by_track(tiny_pipe_64, two_speakers, short_speech, caplog):
    video = two_speakers["short_cut"]
    run = lambda **kw: tiny_pipe_64(video, short_speech, num_inference_steps=STEPS,  # noqa: E731
                                  generator=torch.Generator().manual_seed(0), **kw)
    largest = run()  # its 16 frames lie in the first 1 s shot: the first pass stops before the cut
    assert [s.rule for s in largest.faces] == ["largest"] and not largest.faces[0].scores
    with caplog.at_level(logging.WARNING):
        only_second_shot = run(face_index=2)  # a face of the second shot: the first shot (our 16 frames) is left
    assert _shots(only_second_shot) == [(None, "face_index"), (2, "face_index")]
    assert only_second_shot.frames_without_face == 16 and "pass through unchanged" in caplog.text
    np.testing.assert_array_equal(only_second_shot.frames, decode(video)[:16])
    with pytest.raises(LatentSyncInputError, match=r"face_index=4, but 4 face track\(s\) were found .*0\.\.3"):
        run(face_index=4)
    boxed = run(face_box=(470, 120, 120, 120), face_box_frame=10)  # on the right face in the first shot
    assert _shots(boxed) == [(1, "face_box"), (None, "face_box")]


def test_speaking_without_a_soundtrack_falls_back_to_the_largest(tiny_pipe_64, two_speakers, short_speech, caplog):
    frames = decode(two_speakers["swapped"])[:30]  # frames in memory have no soundtrack
    with caplog.at_level(logging.WARNING):
        out = tiny_pipe_64(frames, short_speech, face="speaking", num_inference_steps=STEPS)
    assert [s.rule for s in out.faces] == ["largest (no soundtrack)"] and "no soundtrack" in caplog.text
    tracks = track_faces(frames)
    assert out.faces[0].track == max(tracks, key=lambda t: t.total_area).index


def test_lip_score_follows_the_sound_and_not_another_voice():
    rng = np.random.default_rng(0)
    n = 150
    envelope = np.clip(np.convolve(rng.normal(0, 1, n), np.ones(4) / 4, "same"), 0, None)  # syllable-like bursts
    lips = np.stack([0.02 + 0.3 * envelope] * 3, axis=1) + rng.normal(0, 0.005, (n, 3))
    own = np.roll(envelope, 3) + 0.01  # the sound follows the lips by 120 ms
    other = np.clip(np.convolve(rng.normal(0, 1, n), np.ones(4) / 4, "same"), 0, None) + 0.01
    assert lip_score(lips, own) > 0.6 and lip_score(lips, other) < 0.3
    lips[40:50] = np.nan  # a short gap is bridged
    assert lip_score(lips, own) > 0.5
    assert lip_score(lips[:20], own[:20]) is None  # too short to tell
    loud = frame_loudness(np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000), 30)
    assert loud.shape == (30,) and loud[:20].min() > 0.5 and (loud[25:] == 0).all()  # 1 s of a tone, then nothing


# ---------------------------------------------------------------------------------------------------- selection
def _track(index: int, shot: int, frames: range, box: tuple[float, float, float, float]) -> FaceTrack:
    n = len(frames)
    return FaceTrack(index, shot, np.array(frames), np.tile(np.array(box, float), (n, 1)), np.ones(n),
                     np.zeros((n, 3, 2)), np.zeros((n, 3)), thumbnail=None)


def _tracks() -> FaceTracks:
    return FaceTracks([_track(0, 0, range(0, 50), (10, 10, 40, 40)), _track(1, 0, range(0, 50), (100, 10, 60, 60)),
                       _track(2, 1, range(50, 100), (10, 10, 50, 50))], [(0, 50), (50, 100)], 100, (200, 100))


def test_selection_rules_on_tracks(caplog):
    tracks = _tracks()
    largest = select_faces(tracks)
    assert [v.index for v in largest.voices[0]] == [1, 2] and [s.rule for s in largest.shots] == ["largest"] * 2
    clear = select_faces(tracks, "speaking", scores={0: 0.4, 1: 0.1, 2: None}, rule=LIP_RULE)
    assert [(s.track, s.rule) for s in clear.shots] == [(0, "speaking"), (2, "speaking")]
    assert clear.shots[0].scores == {0: 0.4, 1: 0.1}
    with caplog.at_level(logging.WARNING):
        unclear = select_faces(tracks, "speaking", scores={0: 0.30, 1: 0.28, 2: 0.5}, rule=LIP_RULE)
    assert [(s.track, s.rule) for s in unclear.shots] == [(1, "largest (no clear speaker)"), (2, "speaking")]
    assert "no face is clearly speaking" in caplog.text
    assert select_faces(tracks, face=2).voices == [[tracks[2]]]
    assert select_faces(tracks, tracks[0]).voices == [[tracks[0]]]
    voices = select_faces(tracks, voice_tracks=[2, tracks[0]])
    assert [[t.index for t in v] for v in voices.voices] == [[2], [0]]
    assert [s.tracks for s in voices.shots] == [(0,), (2,)] and voices.shots[0].rule == "audio per face"
    with pytest.raises(LatentSyncInputError, match=r"audio mapping key=7, but 3 face track\(s\)"):
        select_faces(tracks, voice_tracks=[7])
    assert select_faces(tracks, face_box=(95, 5, 60, 60), face_box_frame=20).voices == [[tracks[1]]]
    with pytest.raises(LatentSyncInputError, match="face_box_frame=100, but video has 100 frames"):
        select_faces(tracks, face_box=(95, 5, 60, 60), face_box_frame=100)
    with pytest.raises(LatentSyncInputError, match=r"no face track overlaps .* \(faces on that frame: face 0: "
                                                   r"\(10, 10, 40, 40\), face 1: \(100, 10, 60, 60\)\)"):
        select_faces(tracks, face_box=(60, 60, 20, 20), face_box_frame=3)


def test_speaking_choice_without_sound_in_memory(caplog):
    """Without sound, a shot with several faces falls back to the largest (said in its rule, warned); a shot with one
    face is no guess (it was reported as one, and the app said "who speaks could not be told" of a one-face video)."""
    source = open_frames(np.zeros((4, 8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        chosen = choose_faces(_tracks(), source, face="speaking")
    assert [s.rule for s in chosen.shots] == ["largest (no soundtrack)", "largest"]
    assert "frames in memory" in caplog.text
    caplog.clear()
    one_face = FaceTracks([_track(0, 0, range(0, 50), (10, 10, 40, 40))], [(0, 50)], 50, (200, 100))
    with caplog.at_level(logging.WARNING):
        chosen = choose_faces(one_face, source, face="speaking")
    assert [(s.track, s.rule) for s in chosen.shots] == [(0, "largest")] and "cannot be heard" not in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"face": "loudest"}, "face must be one of"),
    ({"face_index": -1}, "face_index must be an integer"),
    ({"face_box": (1, 2, 3)}, "face_box must be"),
    ({"face_box": (1, 2, 0, 4)}, "face_box must be"),
    ({"face_box_frame": -2}, "face_box_frame"),
    ({"face": "speaking", "face_index": 1}, "one way only"),
    ({"voice_tracks": [0], "face": "speaking"}, "do not also pass face"),
    ({"voice_tracks": []}, "empty"),
    ({"voice_tracks": ["left"]}, "face track numbers"),
])
def test_face_arguments_are_checked(kwargs, message):
    with pytest.raises(LatentSyncInputError, match=message):
        check_face_arguments(**kwargs)
    check_face_arguments(face="largest", face_index=None)


def test_cli_face_and_voice_arguments():
    assert face_choice("speaking") == {"face": "speaking"} and face_choice("2") == {"face_index": 2}
    assert face_choice("10,20,30.5,40") == {"face_box": (10.0, 20.0, 30.5, 40.0)}
    assert voice("1=b.wav") == (1, "b.wav")
    for bad in ("left", "1,2,3", "1,2,-3,4"):
        with pytest.raises(Exception, match="expected"):
            face_choice(bad)
    with pytest.raises(Exception, match="FACE=FILE"):
        voice("b.wav")


# ---------------------------------------------------------------------------------------------------- voices
def test_mix_and_fit_length():
    a, b = np.full(4, 0.3, np.float32), np.full(6, 0.9, np.float32)
    mix = mix_tracks([a, b])
    assert len(mix) == 6 and np.allclose(mix[:4], 1.0) and np.allclose(mix[4:], 0.75)  # scaled by 1 / 1.2
    assert np.allclose(mix_tracks([a * 0.5, a * 0.5]), a * 1.0)  # no clipping: no scaling
    assert fit_length(a, 2).tolist() == a[:2].tolist() and fit_length(a, 6)[4:].tolist() == [0, 0]


@pytest.fixture(scope="module")
def conversation(crops, tmp_path_factory) -> dict[str, Path]:
    """0.64 s of demo1 | demo2 and two different speech tracks as long."""
    folder = tmp_path_factory.mktemp("conversation")
    video = side_by_side(crops, folder / "two.mp4", "demo1", "demo2", "demo1", (0, 0, 0), 0.64)
    speech = {}
    for name, start in (("a", 1.0), ("b", 3.0)):
        speech[name] = folder / f"{name}.wav"
        ffmpeg("-ss", str(start), "-t", "0.64", "-i", os.fspath(shared_file("demo2_audio.wav")),
               os.fspath(speech[name]))
    return {"video": video, **speech}


def test_a_voice_per_face_changes_both_mouths_and_nothing_else(tiny_pipe_64, conversation, tmp_path):
    video, a, b = conversation["video"], conversation["a"], conversation["b"]
    run = lambda audio, **kw: tiny_pipe_64(video, audio, num_inference_steps=STEPS,  # noqa: E731
                                        generator=torch.Generator().manual_seed(0), **kw)
    out = tmp_path / "dubbed.mp4"
    both = run({0: a, 1: b}, output_path=out, return_frames=True)
    same = run({0: b, 1: b})
    source = decode(video)[: both.num_frames]
    tracks = track_faces(source)
    assert len(tracks) == 2 and [s.tracks for s in both.faces] == [(0, 1)]
    changed = np.abs(both.frames.astype(int) - source).sum(-1) > 0
    # where the mouths are pasted: the soft mouth region of the aligned face (and a pixel around it, also past the
    # aligned face's edge, where the bilinear warp still blends), mapped back into each frame
    aligner, pad = FaceAligner(tiny_pipe_64.config.resolution), 2
    region = cv2.dilate(np.pad((aligner.alpha > 0).astype(np.uint8), pad), np.ones((3, 3), np.uint8))
    anchors = [combined_anchors([track], len(source), 1.5) for track in tracks]
    for k in range(both.num_frames):
        allowed = np.zeros(changed.shape[1:], np.uint8)
        for face_anchors in anchors:
            inverse = cv2.invertAffineTransform(aligner.matrix(face_anchors[k]) + [[0, 0, pad], [0, 0, pad]])
            allowed |= cv2.warpAffine(region, inverse, allowed.shape[::-1], flags=cv2.INTER_NEAREST)
        assert not (changed[k] & ~allowed.astype(bool)).any(), f"frame {k} changed outside the two mouths"
    left, right = changed[:, :, :SIDE], changed[:, :, SIDE:]
    assert left.any(axis=(1, 2)).all() and right.any(axis=(1, 2)).all()  # both mouths are regenerated
    # each face follows its own voice: giving face 0 another voice changes face 0 only
    assert not np.array_equal(both.frames[:, :, :SIDE], same.frames[:, :, :SIDE])
    np.testing.assert_array_equal(both.frames[:, :, SIDE:], same.frames[:, :, SIDE:])
    # the sound of the output is the mix of the two voices
    written, expected = load_audio(out), mix_tracks([load_audio(a), load_audio(b)])
    n = min(len(written), len(expected))
    assert abs(len(written) - len(expected)) < 0.1 * 16000 and np.corrcoef(written[:n], expected[:n])[0, 1] > 0.9


def test_mix_audio_sets_the_sound_and_the_length(tiny_pipe_64, conversation, tmp_path):
    music = write_wav(tmp_path / "mix.wav", 0.2 * np.sin(2 * np.pi * 330 * np.arange(8000) / 16000))  # 0.5 s
    out = tiny_pipe_64(conversation["video"], {0: conversation["a"], 1: conversation["b"]}, mix_audio=music,
                    output_path=tmp_path / "o.mp4", num_inference_steps=STEPS)
    assert out.num_frames == num_video_frames(8000) and abs(len(load_audio(tmp_path / "o.mp4")) - 8000) < 1600
    with pytest.raises(LatentSyncInputError, match="do not also pass face"):
        tiny_pipe_64(conversation["video"], {0: conversation["a"]}, face="speaking")
    with pytest.raises(LatentSyncInputError, match="audio for face 1 file not found"):
        tiny_pipe_64(conversation["video"], {0: conversation["a"], 1: tmp_path / "missing.wav"})



def test_the_sound_of_a_voice_per_face_keeps_the_voices_quality(tiny_pipe_64, example_face, example_speech,
                                                                tmp_path):
    """The output's sound of a voice per face is the mix of the voices at their quality (the highest sample rate,
    stereo when one is): it was their 16 kHz mono mix, whatever the files. Each voice plays from the first frame, and
    the face mapped twice to one file counts once."""
    import av

    video = tmp_path / "two.mp4"
    ffmpeg("-i", os.fspath(example_face), "-t", "0.8", "-filter_complex", "[0:v][0:v]hstack", "-c:v", "libx264",
           "-crf", "14", os.fspath(video))
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    # a: 44.1 kHz stereo, its right channel quieter; b: 48 kHz stereo, its speech after 0.3 s of silence
    ffmpeg("-t", "1.0", "-i", os.fspath(example_speech), "-af", "pan=stereo|c0=0.4*c0|c1=0.12*c0", "-ar", "44100",
           os.fspath(a))
    ffmpeg("-ss", "1.5", "-t", "0.6", "-i", os.fspath(example_speech), "-ac", "2", "-ar", "48000", "-af",
           "adelay=300:all=1", os.fspath(b))
    out = tmp_path / "dubbed.mp4"
    result = tiny_pipe_64(video, {0: a, 1: b}, output_path=out, num_inference_steps=STEPS)
    assert [s.tracks for s in result.faces] == [(0, 1)]
    with av.open(os.fspath(out)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.codec_context.channels) == (48000, 2)
        sound = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)  # (2, samples), planar
    assert abs(sound.shape[1] / 48000 - 1.0) < 0.1  # as long as the longest voice
    left, right = sound
    first = slice(0, int(0.25 * 48000))  # before b's speech: a alone, its channels kept apart
    assert np.abs(right[first]).max() < 0.5 * np.abs(left[first]).max()
    expected = load_audio(out, track=0)  # the mix, back at 16 kHz mono, against the voices' own mix
    mix = mix_tracks([load_audio(a), load_audio(b)])
    n = min(len(expected), len(mix))
    assert np.corrcoef(expected[:n], mix[:n])[0, 1] > 0.9
    # one file for both faces: its sound once, not twice as loud
    tiny_pipe_64(video, {0: a, 1: a}, output_path=tmp_path / "same.mp4", num_inference_steps=STEPS)
    peak = np.abs(load_audio(a)).max()
    assert peak < 0.4  # twice as loud would not be scaled down to full scale
    assert 0.8 * peak < np.abs(load_audio(tmp_path / "same.mp4")).max() < 1.2 * peak


# ---------------------------------------------------------------------------------------------------- SyncNet
def test_offset_confidence_on_a_subset_of_windows():
    torch.manual_seed(0)
    audio = torch.randn(60, 8)
    visual = torch.roll(audio, 3, dims=0)  # the picture lags the sound by 3 frames
    full = offset_confidence(visual, audio, vshift=6)
    starts = np.arange(0, 60, 2)
    half = offset_confidence(visual[starts], audio, vshift=6, visual_starts=starts)
    assert full.offset == half.offset == 3 and half.num_windows == 30 and half.confidence > 1
    with pytest.raises(ValueError, match="visual_starts"):
        offset_confidence(visual[:3], audio, visual_starts=[0, 1])


def test_syncnet_scores_every_track(two_speakers):
    video = two_speakers["swapped"]
    frames = decode(video)[:40]
    tracks = track_faces(frames)
    torch.manual_seed(0)
    net = build_tiny_syncnet(32).eval()
    scores = syncnet_scores(frames, tracks, load_audio(video), net, stride=4, vshift=3)
    assert sorted(scores) == [0, 1] and all(isinstance(v, float) and np.isfinite(v) for v in scores.values())
    short = syncnet_scores(frames[:10], track_faces(frames[:10]), load_audio(video), net)
    assert set(short.values()) == {None}  # no complete 16-frame window


def test_a_syncnet_component_is_saved_and_used(tiny_model_dir_64, tiny_syncnet_dir, tmp_path, two_speakers,
                                               short_speech):
    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir_64)
    assert pipe.syncnet is None
    pipe.load_syncnet(tiny_syncnet_dir)
    pipe.save_pretrained(tmp_path / "with_syncnet")
    loaded = LatentSyncPipeline.from_pretrained(tmp_path / "with_syncnet")
    assert loaded.syncnet is not None and loaded.syncnet.config.resolution == 32
    loaded.set_progress_bar_config(disable=True)
    frames_video = tmp_path / "short.mp4"
    ffmpeg("-i", os.fspath(two_speakers["swapped"]), "-t", "1", "-c:v", "libx264", "-c:a", "aac",
           os.fspath(frames_video))
    out = loaded(frames_video, short_speech, face="speaking", num_inference_steps=STEPS)
    [shot] = out.faces
    assert set(shot.scores) == {0, 1} and all(np.isfinite(v) for v in shot.scores.values())


# ---------------------------------------------------------------------------------------------------- CLI
def test_faces_command_lists_the_tracks_and_writes_a_contact_sheet(two_speakers, tmp_path, caplog):
    sheet, listing = tmp_path / "sheet.png", tmp_path / "tracks.json"
    with caplog.at_level(logging.INFO):
        code = main(["faces", os.fspath(two_speakers["swapped"]), "--sheet", os.fspath(sheet), "--json",
                     os.fspath(listing), "--speaking"])
    assert code == 0 and "2 face track(s) in 1 shot(s)" in caplog.text
    assert "face 0: shot 0, frames 0-" in caplog.text and "face 1: shot 0" in caplog.text
    assert "shot 0 (frames 0-149): face 1 (speaking)" in caplog.text
    record = json.loads(listing.read_text())
    assert [t["index"] for t in record["tracks"]] == [0, 1] and record["speaking"][0]["track"] == 1
    assert cv2.imread(os.fspath(sheet)).shape == (160 + 34, 2 * 160, 3)
    assert main(["faces", os.fspath(tmp_path / "missing.mp4")]) == 2


def test_faces_command_never_writes_over_its_video(example_face, tmp_path, caplog, monkeypatch):
    """``--sheet`` or ``--json`` naming the video itself is refused before any tracking (it used to replace the
    video with the JSON or the picture); so are ``--syncnet`` without ``--speaking`` and a missing ``--syncnet``."""
    def refuse(*args, **kwargs):
        raise AssertionError("the faces were tracked before the bad option was refused")

    monkeypatch.setattr("latentsync.face.tracking.track_faces", refuse)
    video = tmp_path / "clip.mp4"
    video.write_bytes(example_face.read_bytes())
    for args, message in [(["--json", os.fspath(video)], "--json"), (["--sheet", os.fspath(video)], "--sheet"),
                          (["--speaking", "--syncnet", os.fspath(tmp_path / "none")], "not found: --syncnet=")]:
        caplog.clear()
        assert main(["faces", os.fspath(video), *args]) == 2, args
        assert message in caplog.text, caplog.text
    assert video.read_bytes() == example_face.read_bytes()
    with pytest.raises(SystemExit):
        main(["faces", os.fspath(video), "--syncnet", os.fspath(tmp_path)])


def test_faces_speaking_scores_against_the_chosen_audio_track(two_track_video, tmp_path, caplog, monkeypatch):
    """``faces --speaking --audio-track N`` scores the faces against track N of the video (numbered from 1); a track
    the video lacks is one line before any tracking, and the option without ``--speaking`` a usage error."""
    from latentsync.face import selection

    real, seen = selection.choose_faces, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("sound_track"))
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "choose_faces", spy)
    sheet = os.fspath(tmp_path / "sheet.png")
    for extra in ([], ["--audio-track", "1"], ["--audio-track", "2"]):
        assert main(["faces", os.fspath(two_track_video), "--sheet", sheet, "--speaking", *extra]) == 0, caplog.text
    assert seen == ["speech", 0, 1]  # the readers' track: the automatic choice, then ffmpeg's 0:a:0 and 0:a:1

    def refuse(*args, **kwargs):
        raise AssertionError("the faces were tracked before the bad option was refused")

    monkeypatch.setattr("latentsync.face.tracking.track_faces", refuse)
    caplog.clear()
    assert main(["faces", os.fspath(two_track_video), "--sheet", sheet, "--speaking", "--audio-track", "3"]) == 2
    assert "--audio-track 3: " in caplog.text and "has 2 audio tracks (numbered from 1)" in caplog.text
    with pytest.raises(SystemExit):
        main(["faces", os.fspath(two_track_video), "--audio-track", "2"])


def test_cli_lip_syncs_a_voice_per_face(tiny_model_dir_64, conversation, tmp_path, caplog):
    out = tmp_path / "dub.mp4"
    with caplog.at_level(logging.INFO):
        code = main(["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(conversation["video"]),
                     "--audio-for", f"0={conversation['a']}", "--audio-for", f"1={conversation['b']}",
                     "--output", os.fspath(out), "--steps", "1", "--device", "cpu", "--dtype", "fp32"])
    assert code == 0 and out.is_file() and "face 0, face 1 (audio per face)" in caplog.text
    code = main(["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(conversation["video"]), "--audio",
                 os.fspath(conversation["a"]), "--face", "5", "--output", os.fspath(tmp_path / "no.mp4")])
    assert code == 2 and "--face=5, but 2 face track(s)" in caplog.text and not (tmp_path / "no.mp4").exists()


# ---------------------------------------------------------------------------------------------------- short gaps
def _missed(monkeypatch, frames: set[int]) -> None:
    """The detector finds nothing in ``frames`` (as for a face turned or half out of the picture)."""
    from latentsync.face.tracking import FaceTracker

    associate = FaceTracker._associate
    monkeypatch.setattr(FaceTracker, "_associate",
                        lambda self, frame, found: associate(self, frame, [] if self.num_frames in frames else found))


GAPS = {"start": {0, 1}, "short": set(range(5, 9)), "long": set(range(13, 27)), "end": {28, 29}}


def test_short_gaps_in_a_track_are_interpolated_and_lip_synced(tiny_pipe_64, example_face, example_speech,
                                                                tmp_path, monkeypatch, caplog):
    """A face missed for 4 frames mid-track is aligned between its neighbours and lip-synced; missed for 14 frames
    (over MAX_FILLED_GAP), or at the track's start or end, it still passes through unchanged."""
    from latentsync.face.tracking import MAX_FILLED_GAP

    source = decode(example_face)[:30]
    _missed(monkeypatch, set().union(*GAPS.values()))
    tracks = track_faces(source)
    [track] = tracks
    assert track.first_frame == 2 and track.last_frame == 27 and len(GAPS["long"]) > MAX_FILLED_GAP >= 4
    anchors = combined_anchors([track], len(source), 1.5)
    missing = np.isnan(anchors[:, 0, 0])
    assert missing.nonzero()[0].tolist() == sorted(GAPS["start"] | GAPS["long"] | GAPS["end"])
    aligner = FaceAligner(64)
    crops = np.array([aligner.matrix(a) if np.isfinite(a[0, 0]) else np.full((2, 3), np.nan) for a in anchors])
    low, high = np.minimum(crops[4], crops[9]), np.maximum(crops[4], crops[9])
    assert ((crops[5:9] >= low - 1e-9) & (crops[5:9] <= high + 1e-9)).all()  # each filled crop between its neighbours
    steps = np.diff(anchors[4:10], axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape))  # evenly spaced: no jump

    audio = tmp_path / "speech.wav"
    ffmpeg("-i", os.fspath(example_speech), "-t", "1.2", os.fspath(audio))
    with caplog.at_level(logging.INFO, logger="latentsync.face.tracking"):
        out = tiny_pipe_64(source, audio, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert "4 frame(s) in short gaps" in caplog.text
    assert out.num_frames == 30 and out.frames_without_face == 2 + 14 + 2
    changed = (out.frames != source).any(axis=(1, 2, 3))
    assert changed[sorted(GAPS["short"])].all()  # lip-synced now (they passed through before)
    assert not changed[sorted(GAPS["start"] | GAPS["long"] | GAPS["end"])].any()


def test_a_gap_is_filled_only_where_the_face_still_looks_like_itself_and_no_other_face_is(monkeypatch):
    """A blank frame inside a track (no scene cut: too short for one) is not given a face, nor is a frame where
    another track of the same voice has its face; frames where the mesh alone failed are filled."""
    def track(index: int, frames: list[int], lookalike: list[int]) -> FaceTrack:
        t = _track(index, 0, frames, (10, 10, 40, 40))
        t.anchors = np.array([[[10 + f, 20], [30 + f, 20], [20 + f, 30]] for f in frames], float)
        t.lookalike_frames = np.array(lookalike, int)
        return t

    looks = track(0, [0, 1, 2, 6, 7, 8], [3, 4, 5])
    anchors = combined_anchors([looks], 10, 0.0)
    np.testing.assert_allclose(anchors[3:6, 0, 0], [13, 14, 15])
    blank = track(0, [0, 1, 2, 6, 7, 8], [3, 5])  # frame 4 looked like something else
    assert np.isnan(combined_anchors([blank], 10, 0.0)[3:6]).all()
    mesh_failed = track(0, [0, 1, 2, 3, 4, 5, 6, 7, 8], [])
    mesh_failed.anchors[3:6] = np.nan
    np.testing.assert_allclose(combined_anchors([mesh_failed], 10, 0.0)[3:6, 0, 0], [13, 14, 15])
    other = _track(1, 0, [4], (10, 10, 40, 40))
    other.anchors = np.full((1, 3, 2), 99.0)
    both = combined_anchors([looks, other], 10, 0.0)
    assert both[4, 0, 0] == 99.0 and np.isnan(both[[3, 5]]).all()  # the other face keeps its frame; no fill around it


def test_a_missed_face_is_fillable_only_where_it_still_looks_like_itself_and_no_other_face_is_in_front():
    from latentsync.face.detection import FaceBox
    from latentsync.face.tracking import _appearance, _Detection, _OpenTrack

    skin = np.zeros((100, 100, 3), np.uint8)
    skin[:] = (200, 150, 120)
    box = FaceBox(30, 30, 70, 70, 0.9)
    track = _OpenTrack(0)
    track.add(0, _Detection(box, None, _appearance(skin, box)), skin, 16)
    track.note_missed(1, skin)  # same picture, face not detected: fillable
    track.note_missed(2, np.full_like(skin, 128))  # a blank frame: not
    track.note_missed(3, skin, [FaceBox(35, 35, 75, 75, 0.9)])  # another face in front: not
    assert track.lookalike == [1]


def _drawn_face() -> tuple[np.ndarray, FaceBox]:
    """A skin-coloured face with eyes, a nose shadow and open lips on a darker background, and its box."""
    image = np.full((120, 120, 3), (60, 70, 90), np.uint8)
    cv2.ellipse(image, (60, 60), (32, 40), 0, 0, 360, (205, 160, 130), -1)
    for x in (47, 73):
        cv2.ellipse(image, (x, 48), (6, 3), 0, 0, 360, (40, 30, 30), -1)
    cv2.line(image, (60, 52), (60, 66), (170, 125, 100), 3)
    cv2.ellipse(image, (60, 76), (12, 6), 0, 0, 360, (170, 60, 70), -1)  # lips
    cv2.ellipse(image, (60, 76), (9, 3), 0, 0, 360, (50, 20, 25), -1)  # open mouth
    return image, FaceBox(30, 30, 90, 90, 0.9)


def test_a_hand_over_the_mouth_is_not_filled_but_a_blurred_face_is():
    """A skin-coloured hand over the mouth and chin keeps the face's colours (the colour check alone let it be
    filled, putting a generated mouth on the hand); it lacks the mouth's contrast, so it is not filled now. A
    motion-blurred face keeps that contrast and is still filled."""
    from latentsync.face.tracking import _appearance, _Detection, _OpenTrack

    face, box = _drawn_face()
    hand = face.copy()
    noise = np.random.default_rng(0).normal(0, 6, (40, 70, 3))
    hand[62:102, 25:95] = np.clip(np.array([205, 160, 130]) + noise, 0, 255).astype(np.uint8)
    blurred = cv2.filter2D(face, -1, np.full((1, 9), 1 / 9, np.float32))
    track = _OpenTrack(0)
    track.add(0, _Detection(box, None, _appearance(face, box)), face, 16)
    track.note_missed(1, blurred)
    track.note_missed(2, hand)
    assert track.lookalike == [1]


def test_on_a_real_face_a_missed_or_blurred_frame_is_filled_but_not_a_hand_over_the_mouth():
    """The first frames of a shared clip with their stored face boxes: the face missed in frame 8 (unchanged or
    motion-blurred) is fillable; the same frame with its mouth and chin covered by a patch of the face's own cheek
    colour (a hand) is not, nor a grey frame."""
    from itertools import islice

    from latentsync.face.tracking import _appearance, _Detection, _OpenTrack
    from latentsync.media import iter_frames

    frames = list(islice(iter_frames(shared_file("demo1_video.mp4"), 25), 9))
    stored = np.load(Path(__file__).parent.parent / "benchmarks" / "data" / "demo1_8s_face_tracks.npz")
    boxes = [FaceBox(x, y, x + w, y + h, 0.9) for x, y, w, h in stored["0_boxes"][:9]]
    track = _OpenTrack(0)
    for index in range(8):
        track.add(index, _Detection(boxes[index], None, _appearance(frames[index], boxes[index])), frames[index], 16)
    face, box = frames[8], boxes[8]
    x0, y0, w, h = int(box.x0), int(box.y0), int(box.x1 - box.x0), int(box.y1 - box.y0)
    cheek = np.median(face[y0 + h * 55 // 100: y0 + h * 70 // 100, x0 + w * 12 // 100: x0 + w * 28 // 100]
                      .reshape(-1, 3), axis=0)
    hand = face.copy()
    covered = hand[y0 + h * 55 // 100: y0 + h * 110 // 100, x0 - w // 20: x0 + w * 21 // 20]  # mouth and chin
    covered[:] = np.clip(cheek + np.random.default_rng(0).normal(0, 6, covered.shape), 0, 255).astype(np.uint8)
    for name, picture in [("missed", face), ("blurred", cv2.filter2D(face, -1, np.full((1, 31), 1 / 31, np.float32))),
                          ("hand", hand), ("grey", np.full_like(face, 128))]:
        track.lookalike.clear()
        track.note_missed(8, picture)
        assert (track.lookalike == [8]) == (name in ("missed", "blurred")), name
