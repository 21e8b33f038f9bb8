"""Video and audio files (latentsync.media): probing, decoding at 25 fps, atomic writing, WAV round trips, the
audio checks, and finding videos in folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import ffmpeg, shared_file, write_video
from latentsync.errors import InvalidAudioError, InvalidVideoError
from latentsync.media import audio as media_audio
from latentsync.media import (
    SAMPLE_RATE,
    VIDEO_EXTENSIONS,
    VideoWriter,
    as_samples,
    check_output_path,
    find_videos,
    is_video_file,
    iter_frames,
    load_audio,
    open_frames,
    probe_video,
    scan_audio,
    speech_track,
    trim_media,
    write_wav,
)
from latentsync.media.audio import copy_track
from latentsync.media.timeline import read_timestamps


def _gradient(i: int, size: int = 32) -> np.ndarray:
    frame = np.zeros((size, size, 3), np.uint8)
    frame[..., 0] = (np.arange(size) * 8 + i * 10) % 256
    return frame


def test_probe_and_decode_resample_to_25_fps(tmp_path):
    video = write_video(tmp_path / "ten_fps.mp4", [_gradient(i) for i in range(10)], fps=10,
                        audio=0.3 * np.sin(np.arange(SAMPLE_RATE) / 10))
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.has_audio) == (32, 32, 10.0, True)
    assert abs(info.duration - 1.0) < 0.1
    assert len(list(iter_frames(video, fps=None))) == 10
    at_25 = list(iter_frames(video))  # one second at the model's 25 fps
    assert len(at_25) == 25 and at_25[0].shape == (32, 32, 3) and at_25[0].dtype == np.uint8
    source = open_frames(video)
    assert source.expected_frames == 25 and source.path == os.fspath(video) and len(list(source)) == 25


def test_probe_errors_name_the_file(tmp_path):
    with pytest.raises(InvalidVideoError, match="video file not found: .*missing.mp4"):
        probe_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InvalidVideoError, match="empty"):
        probe_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(InvalidVideoError, match="cannot read video"):
        probe_video(tmp_path / "text.mp4")


def test_video_writer_is_atomic(tmp_path):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 25, crf=10) as writer:
        for i in range(5):
            writer.write(_gradient(i))
        assert not out.exists()  # only a hidden partial file until the writer closes
    assert out.is_file() and writer.frames_written == 5 and list(tmp_path.iterdir()) == [out]
    assert np.abs(next(iter_frames(out, None)).astype(int) - _gradient(0)).mean() < 3
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "failed.mp4") as writer:
            writer.write(_gradient(0))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [out]
    with pytest.raises(InvalidVideoError, match="no frames"):
        VideoWriter(tmp_path / "nothing.mp4").close()


def test_output_path_checks():
    assert check_output_path("result.MKV") == "result.MKV"
    with pytest.raises(InvalidVideoError, match="unsupported output format .gif"):
        check_output_path("out.gif")
    with pytest.raises(InvalidVideoError, match="output folder does not exist"):
        check_output_path("/no/such/folder/out.mp4")


def _noise_frames(n: int = 30, side: int = 256) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), np.uint8) for _ in range(n)]


def test_a_disk_that_fills_up_leaves_no_output_and_one_line(tmp_path, monkeypatch):
    """ffmpeg that cannot write the end of the file (here a file-size limit, which fails its writes as a full disk
    does) is an error naming the output and ffmpeg's reason, and nothing is left. The writer used not to look at
    ffmpeg's exit status: the cut file became the output, and the run said it wrote it."""
    import imageio_ffmpeg

    from conftest import FFMPEG
    from latentsync.errors import InvalidOutputError

    small_disk = tmp_path / "ffmpeg-small-disk"
    small_disk.write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 20\nexec '{FFMPEG}' \"$@\"\n")
    small_disk.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: os.fspath(small_disk))
    out = tmp_path / "out" / "synced.mp4"
    out.parent.mkdir()
    with pytest.raises(InvalidOutputError, match=r"^cannot write .*synced\.mp4: .*File too large$"), \
            VideoWriter(out, 25) as writer:
        for frame in _noise_frames():
            writer.write(frame)
    assert list(out.parent.iterdir()) == []


def test_a_disk_that_fills_up_with_timestamps_leaves_no_output_and_one_line(tmp_path):
    """The same with the input's own timeline (PyAV writes the picture): one line instead of PyAV's OSError."""
    import errno

    from latentsync.errors import InvalidOutputError
    from latentsync.media.timeline import TimedVideoWriter

    class FullDisk:
        def __init__(self, container):
            self.container = container

        def mux(self, packet):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.container.close()

    frames = _noise_frames()
    writer = TimedVideoWriter(tmp_path / "synced.mp4", np.arange(len(frames)) / 25.0)
    with pytest.raises(InvalidOutputError, match=r"^cannot write .*synced\.mp4: No space left on device$"), writer:
        writer.write(frames[0])
        writer._container = FullDisk(writer._container)
        for frame in frames[1:]:
            writer.write(frame)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("timed", [False, True], ids=["25fps", "timestamps"])
def test_written_video_says_its_colour_matrix(tmp_path, timed):
    """Frames become YUV with the BT.601 matrix in TV range, and the file says so: players show an untagged HD file
    with BT.709, which shifts every colour of the output (a 1080p phone video came back greener and darker)."""
    import subprocess

    from conftest import FFMPEG

    frames = _frames()
    decoded = _write_with(tmp_path, "tagged.mp4", None, timed=timed)
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", os.fspath(tmp_path / "tagged.mp4")], capture_output=True,
                            text=True, check=False).stderr
    assert "yuv420p(tv, smpte170m" in header, header
    assert np.abs(decoded.astype(int) - np.stack(frames)).mean() < 5  # (BT.709 read: about 9)
    _write_with(tmp_path, "untagged.mp4", None, timed=timed, tag_colors=False)  # the frames of an untagged file
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", os.fspath(tmp_path / "untagged.mp4")], capture_output=True,
                            text=True, check=False).stderr
    assert "smpte170m" not in header and "yuv420p(progressive)" in header, header


@pytest.mark.parametrize("timed", [False, True], ids=["25fps", "timestamps"])
def test_a_speech_track_that_starts_late_plays_from_the_first_frame(tmp_path, timed):
    """The lips are made for the speech read sample after sample from its first one (``load_audio``), so the output's
    sound starts with the first frame too. A speech file whose track starts after its picture (a video given as the
    speech, here 0.6 s late) used to be muxed with that delay: the sound lagged the lips by 0.6 s and the file ran
    0.6 s past its last frame."""
    from latentsync.media.timeline import TimedVideoWriter

    speech = np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE).astype(np.float32) * 0.5
    wav = tmp_path / "speech.wav"
    write_wav(wav, speech)
    late = tmp_path / "late.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=size=64x64:rate=25:duration=1.6", "-itsoffset", "0.6", "-i", os.fspath(wav),
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", os.fspath(late))
    assert len(load_audio(late, video_clock=True)) > 1.5 * SAMPLE_RATE  # the track starts 0.6 s into the file
    frames = [_gradient(i) for i in range(25)]  # one second: the speech read from its first sample
    out = tmp_path / "synced.mp4"
    writer = TimedVideoWriter(out, np.arange(25) / 25.0, audio_path=os.fspath(late)) if timed else \
        VideoWriter(out, 25, audio_path=os.fspath(late))
    with writer:
        for frame in frames:
            writer.write(frame)
    sound = load_audio(out, video_clock=True)  # on the output's clock: the frames start at 0
    assert len(sound) < 1.2 * SAMPLE_RATE, len(sound) / SAMPLE_RATE  # 1 s of speech (and AAC's padding)
    assert np.abs(sound[: SAMPLE_RATE // 10]).max() > 0.2  # no silence in front


def test_speech_of_many_channels_is_muxed_mixed_down(tmp_path):
    """A speech file of 10 channels (a field recorder's poly WAV; ffmpeg calls the layout 5.1.4) is read for the lips
    (mixed to mono) and its sound is muxed in a layout the AAC encoder takes. The encoder used to refuse it when the
    file was written, at the very end of the run."""
    wav = tmp_path / "speech.wav"
    write_wav(wav, np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE).astype(np.float32) * 0.5)
    poly = tmp_path / "poly.wav"
    ffmpeg("-i", os.fspath(wav), "-ac", "10", os.fspath(poly))
    out = tmp_path / "synced.mp4"
    with VideoWriter(out, 25, audio_path=os.fspath(poly)) as writer:
        for i in range(25):
            writer.write(_gradient(i))
    assert probe_video(out).has_audio and np.abs(load_audio(out)).max() > 0.2


def test_long_output_names(tmp_path):
    """An output name of 244 bytes (80 Chinese characters) is written by both writers: their hidden partial files
    used to add ~30 bytes to it, past the 255 bytes file systems take ("File name too long" once the first frame
    was made). A name the file system cannot hold at all is refused by the checks, not by the rename at the end."""
    from latentsync.errors import InvalidOutputError
    from latentsync.media.timeline import TimedVideoWriter

    frames = [_gradient(i) for i in range(5)]
    for name, writer in (("字" * 80 + ".mp4", lambda p: VideoWriter(p, 25)),
                         ("字" * 79 + "x.mkv", lambda p: TimedVideoWriter(p, np.arange(5) / 25.0))):
        with writer(tmp_path / name) as w:
            for frame in frames:
                w.write(frame)
        assert probe_video(tmp_path / name).width == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["字" * 80 + ".mp4", "字" * 79 + "x.mkv"])
    with pytest.raises(InvalidOutputError, match=r"^output file name is too long: 256 bytes \(UTF-8\), the file "
                                                 r"system takes 255: "):
        check_output_path(tmp_path / ("字" * 84 + ".mp4"))


def test_an_anamorphic_video_comes_out_as_wide_as_it_went_in(tmp_path):
    """Anamorphic video (DVD, HDV, some broadcasts) stores fewer columns than players show: the frames are read as
    stored and the output records the same pixel shape, at 25 fps and on the input's own timeline. The output used to
    have square pixels: a 16:9 picture played squeezed."""
    from fractions import Fraction

    from latentsync.media.timeline import TimedVideoWriter, open_timed_frames

    anamorphic = write_video(tmp_path / "anamorphic.mp4", [_gradient(i) for i in range(5)])  # 32 x 32 stored
    ffmpeg("-i", os.fspath(anamorphic), "-vf", "setsar=4/3", "-c:v", "libx264", os.fspath(tmp_path / "wide.mp4"))
    wide = tmp_path / "wide.mp4"
    assert probe_video(wide).sample_aspect == Fraction(4, 3) and probe_video(anamorphic).sample_aspect == 1
    for source, writer in ((open_frames(wide), VideoWriter), (open_timed_frames(wide), TimedVideoWriter)):
        assert source.sample_aspect == Fraction(4, 3)
        out = tmp_path / f"out_{writer.__name__}.mp4"
        args = (np.arange(source.expected_frames) / 25.0,) if writer is TimedVideoWriter else (25,)
        with writer(out, *args, sample_aspect=source.sample_aspect) as w:
            for frame in source:
                assert frame.shape == (32, 32, 3)
                w.write(frame)
        assert probe_video(out).sample_aspect == Fraction(4, 3), writer


def test_wav_round_trip_and_samples_in_memory(tmp_path):
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    write_wav(tmp_path / "tone.wav", tone)
    back = load_audio(tmp_path / "tone.wav")
    assert back.dtype == np.float32 and len(back) == len(tone)
    assert np.abs(back - tone).max() < 1 / 32767 + 1e-6  # 16-bit rounding only
    assert np.array_equal(as_samples(tone[None]), tone)  # (1, N) is mono
    assert np.array_equal(as_samples(torch.from_numpy(tone)), tone)
    with pytest.raises(InvalidAudioError, match="mono"):
        as_samples(np.zeros((2, 2, 100)))  # stereo (2, N) is mixed down: see below
    with pytest.raises(InvalidAudioError, match="NaN"):
        as_samples(np.array([0.1, np.nan]))


def test_load_audio_errors(tmp_path):
    with pytest.raises(InvalidAudioError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    video_only = write_video(tmp_path / "silent_video.mp4", [_gradient(i) for i in range(3)])
    with pytest.raises(InvalidAudioError, match="no audio stream"):
        load_audio(video_only)


def test_trim_media(tmp_path, example_speech):
    video = write_video(tmp_path / "long.mp4", [_gradient(i) for i in range(50)], audio=np.zeros(2 * SAMPLE_RATE))
    cut = trim_media(os.fspath(video), os.fspath(tmp_path / "cut.mp4"), 1.0, video=True)
    info = probe_video(cut)
    assert abs(info.duration - 1.0) < 0.1 and not info.has_audio
    sound = trim_media(os.fspath(example_speech), os.fspath(tmp_path / "cut.wav"), 0.5, video=False)
    assert abs(len(load_audio(sound)) - SAMPLE_RATE // 2) < 200


def test_find_videos_in_folders(tmp_path):
    for name in ("a.mp4", "b.M4V", "c.txt", ".hidden.mp4", "sub/d.webm", "sub/deeper/e.MOV", ".cache/f.mp4"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert find_videos(tmp_path) == ["a.mp4", "b.M4V", "sub/d.webm", "sub/deeper/e.MOV"]
    assert find_videos(tmp_path, recursive=False) == ["a.mp4", "b.M4V"]
    assert ".m4v" in VIDEO_EXTENSIONS and is_video_file("clip.TS") and not is_video_file(".clip.mp4")
    ffmpeg("-version")  # the bundled ffmpeg runs


# ffmpeg output options that write a tiny video of each listed ending (picture and sound in codecs such files hold)
_WRITE_AS = {
    ".mp4": [], ".mov": [], ".mkv": [], ".m4v": ["-f", "mp4"], ".avi": [], ".flv": [],
    ".webm": ["-c:v", "libvpx", "-c:a", "libopus"], ".ogv": ["-c:v", "libvpx", "-c:a", "libvorbis"],
    ".mpg": ["-c:v", "mpeg2video", "-c:a", "mp2"], ".mpeg": ["-c:v", "mpeg1video", "-c:a", "mp2"],
    ".vob": ["-c:v", "mpeg2video", "-c:a", "mp2", "-f", "vob"], ".ts": [], ".mts": ["-f", "mpegts"],
    ".m2ts": ["-f", "mpegts", "-mpegts_m2ts_mode", "1"],
    ".3gp": ["-c:v", "h263", "-s", "128x96", "-c:a", "libopencore_amrnb", "-ar", "8000", "-ac", "1"],  # old phones
    ".3g2": ["-c:v", "libx264", "-c:a", "aac"], ".wmv": ["-c:v", "wmv2", "-c:a", "wmav2", "-f", "asf"],
    ".mxf": ["-c:v", "mpeg2video", "-c:a", "pcm_s16le", "-ar", "48000"],
}


def test_every_video_ending_is_read(tmp_path):
    """Each ending in VIDEO_EXTENSIONS is a file the tools read: probed, decoded at 25 fps and on its own timeline,
    its sound decoded; and camcorder, phone and Windows videos (.mts, .3gp, .wmv) are among them (they were counted
    as other files and not read)."""
    assert {".mts", ".m2ts", ".3gp", ".wmv"} <= set(VIDEO_EXTENSIONS)
    missing = set(VIDEO_EXTENSIONS) - set(_WRITE_AS)
    assert not missing, f"give _WRITE_AS a way to write {sorted(missing)}, to check that they are read"
    for ext in VIDEO_EXTENSIONS:
        path = tmp_path / f"clip{ext.upper() if ext == '.mts' else ext}"  # camcorders write CLIP.MTS
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=0.4", "-f", "lavfi", "-i",
               "sine=frequency=440:duration=0.4:sample_rate=48000", "-pix_fmt", "yuv420p", *_WRITE_AS[ext], str(path))
        info = probe_video(path)
        assert info.has_audio and info.audio_tracks == 1 and 0.3 < info.duration < 0.6, (ext, info)
        assert 9 <= len(list(iter_frames(path))) <= 11, ext
        assert 9 <= len(read_timestamps(path)[0]) <= 11, ext
        sound = load_audio(path, video_clock=True)
        assert 0.35 < len(sound) / SAMPLE_RATE < 0.6 and np.abs(sound).max() > 0.05, ext
    assert len(find_videos(tmp_path)) == len(VIDEO_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------- audio tracks
def _speech_reference(seconds: float = 2.0) -> np.ndarray:
    return load_audio(shared_file("demo1_video.mp4"))[: int(seconds * SAMPLE_RATE)]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b)) - 500  # AAC's padding at the ends
    return float(np.corrcoef(a[500:n], b[500:n])[0, 1])


def test_the_speech_track_of_a_file_with_several(two_track_video, tmp_path, caplog):
    """A screen recording whose first audio track is silent and whose second holds the voice: the voice is read
    (it used to be the silent first track, and the file was refused or dropped as silent), the choice is logged once
    and the file probed once; a track can be copied as it is for a tool that takes a file's first track."""
    import logging

    speech = _speech_reference()
    media_audio._choose_track.cache_clear()
    with caplog.at_level(logging.INFO, logger="latentsync.media.audio"):
        choice = speech_track(two_track_video)
        assert speech_track(two_track_video) is choice  # probed once while the file is unchanged
    assert (choice.index, choice.tracks, choice.levels[0]) == (1, 2, None) and choice.levels[1] > -40
    assert choice.record() == {"track": 2, "tracks": 2, "levels_db": [None, round(choice.levels[1], 1)]}
    assert caplog.text.count("has 2 audio tracks: the speech is read from track 2") == 1
    assert "track 1 silent" in caplog.text
    assert probe_video(two_track_video).audio_tracks == 2
    assert np.abs(load_audio(two_track_video)).max() < 1e-4  # the first track, as before, when asked for
    voice = load_audio(two_track_video, video_clock=True, track="speech")
    assert _correlation(voice, speech) > 0.99 and np.array_equal(voice, as_samples(two_track_video)[: len(voice)])
    assert not scan_audio(two_track_video, track="speech").silent and scan_audio(two_track_video).silent
    with pytest.raises(InvalidAudioError, match="no audio track 3 in"):
        load_audio(two_track_video, track=2)
    copy = copy_track(two_track_video, 1, tmp_path / "voice.mka")
    assert speech_track(copy).tracks == 1 and _correlation(load_audio(copy), speech) > 0.99
    # a file with one audio track is not decoded to choose: its track is the first
    assert speech_track(shared_file("demo1_video.mp4")) == media_audio.SpeechTrack(
        os.fspath(shared_file("demo1_video.mp4")), 0, 1)


def test_the_first_track_is_kept_unless_another_is_clearly_louder(tmp_path):
    """Two tracks with speech (a dub, a commentary): the first is kept unless another is louder by more than 6 dB
    in the speech band; a microphone track that only hums (50 Hz) or hisses faintly does not count as speech. A long
    file is probed in windows spread over it, so speech that starts late is found."""
    speech = shared_file("demo1_audio.wav")

    def two_tracks(name: str, first: str, second: str, seconds: float = 2.0) -> str:
        path = tmp_path / name
        ffmpeg("-i", str(speech), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-filter_complex",
               f"[0:a]atrim=0:{seconds},asplit[s1][s2];[s1]{first}[a];[s2]{second}[b]", "-map", "[a]", "-map", "[b]",
               "-t", str(seconds), "-c:a", "aac", str(path))
        return str(path)

    assert speech_track(two_tracks("dub.mka", "volume=-3dB", "volume=0dB")).index == 0
    assert speech_track(two_tracks("loud.mka", "volume=-12dB", "volume=0dB")).index == 1
    hum = "volume=0,aeval=0.3*sin(2*PI*50*t)+0.001*(random(0)-0.5):c=same"
    assert speech_track(two_tracks("hum.mka", hum, "volume=-6dB")).index == 1
    # 60 s, speech only from 20 s on in the second track: windows at 7.5, 22.5, 37.5 and 52.5 s find it
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-stream_loop", "-1", "-i", str(speech),
           "-filter_complex", "[1:a]adelay=20s:all=1[late]", "-map", "0:a", "-map", "[late]", "-t", "60",
           "-c:a", "aac", str(tmp_path / "late.mka"))
    assert [start for start, _ in media_audio._probe_windows(60.0)] == [5.0, 20.0, 35.0, 50.0]
    late = speech_track(tmp_path / "late.mka")
    assert late.index == 1 and late.levels[0] is None


def test_an_audio_track_chosen_by_number(two_track_video, tmp_path):
    """``audio_track`` (``--audio-track``) numbers tracks from 1, as the log does ("read from track 2"): the run's
    checks read that track (here the silent first one: refused as silent), a number the file does not have is one
    line saying how many it has, and it is refused where there is no one file to choose in."""
    from latentsync.errors import LatentSyncInputError
    from latentsync.inputs import check_run_inputs, speech_track_of
    from latentsync.media.audio import chosen_track

    assert chosen_track(two_track_video, None) == "speech" and chosen_track(two_track_video, 2) == 1
    assert not check_run_inputs(two_track_video, two_track_video, audio_track=2).audio.silent
    with pytest.raises(InvalidAudioError, match="is silent"):
        check_run_inputs(two_track_video, two_track_video, audio_track=1)
    with pytest.raises(InvalidAudioError, match=r"^audio_track 3: .*two_tracks.mp4 has 2 audio tracks \(numbered "
                                                r"from 1\)$"):
        check_run_inputs(two_track_video, two_track_video, audio_track=3)
    with pytest.raises(InvalidAudioError, match="has 1 audio track "):
        chosen_track(shared_file("demo1_audio.wav"), 2, "--audio-track")
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(LatentSyncInputError, match="audio_track must be an audio track number >= 1"):
            chosen_track(two_track_video, bad)
    with pytest.raises(LatentSyncInputError, match="not of a voice per face"):
        speech_track_of({0: two_track_video}, 2)
    with pytest.raises(LatentSyncInputError, match="audio samples in memory"):
        check_run_inputs(two_track_video, np.ones(16000, np.float32), audio_track=1)
    with pytest.raises(InvalidAudioError, match="audio file not found"):
        chosen_track(tmp_path / "missing.wav", 1)


def test_a_voice_per_face_from_one_track_of_a_file(two_track_video):
    """A voice of a voice per face can be one audio track of a file (``AudioTrack``, ``--audio-for FACE:TRACK=FILE``):
    the checks and the readers take that track (here track 1 is silent, track 2 the speech), a number the file does
    not have says how many it has, and the file still counts as an input the output may not replace."""
    from latentsync.errors import InvalidOutputError, LatentSyncInputError
    from latentsync.inputs import check_run_inputs
    from latentsync.media import AudioTrack

    speech = AudioTrack(two_track_video, 2)
    assert os.fspath(speech) == os.fspath(two_track_video)
    assert not check_run_inputs(two_track_video, {0: speech}).voices[0].silent
    np.testing.assert_array_equal(as_samples(speech), load_audio(two_track_video, track=1))
    assert np.abs(as_samples(AudioTrack(two_track_video, 1))).max() == 0
    with pytest.raises(InvalidAudioError, match=r"two_tracks.mp4 \(audio for face 0\) is silent"):
        check_run_inputs(two_track_video, {0: AudioTrack(two_track_video, 1)})
    with pytest.raises(InvalidAudioError, match=r"^audio for face 1 track 3: .*two_tracks.mp4 has 2 audio tracks "
                                                r"\(numbered from 1\)$"):
        check_run_inputs(two_track_video, {0: speech, 1: AudioTrack(two_track_video, 3)})
    with pytest.raises(InvalidOutputError, match="is the input file"):
        check_run_inputs(shared_file("demo1_video.mp4"), {0: speech}, output_path=two_track_video)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(LatentSyncInputError, match="an audio track number is >= 1"):
            AudioTrack(two_track_video, bad)


def test_the_speaking_face_listens_to_the_chosen_track_of_its_own_video(two_track_video, example_face, tmp_path):
    """``face="speaking"`` scores faces against the video's own sound: with ``audio_track`` and the video as the
    audio file, against that track (here the silent first one: no speech to hear); with another audio file, against
    the video's speech track as before."""
    from types import SimpleNamespace

    from latentsync.face.speaking import soundtrack
    from latentsync.pipeline import _video_track

    source = SimpleNamespace(path=os.fspath(two_track_video))
    assert _video_track(two_track_video, two_track_video, 0) == 0
    assert _video_track(two_track_video, example_face, 0) == "speech"
    assert soundtrack(source, 0) == (None, "silent soundtrack")
    samples, reason = soundtrack(source, _video_track(two_track_video, example_face, 0))
    assert reason is None and np.abs(samples).max() > 0.05


# ---------------------------------------------------------------------------------------------------- hardware decode
def _nvdec_works() -> bool:
    """NVDEC can start only with an NVIDIA driver (libcuda) and a GPU."""
    return torch.cuda.is_available()


@pytest.mark.skipif(_nvdec_works(), reason="this machine has a CUDA GPU: the hardware decoder starts, no fallback")
def test_hardware_decode_falls_back_to_the_cpu_once(example_face, monkeypatch, caplog):
    """Without a GPU the CUDA decoder cannot start: both readers (ffmpeg at 25 fps, PyAV with timestamps) give the
    CPU decoder's frames, after one warning for the whole process."""
    from latentsync.media import timeline, video

    monkeypatch.setattr(video, "_HWACCEL_FAILED", set())
    cpu = np.stack(list(iter_frames(example_face, 25)))
    with caplog.at_level("WARNING", logger="latentsync.media.video"):
        first = np.stack(list(iter_frames(example_face, 25, hwaccel="cuda")))
        again = np.stack(list(open_frames(example_face, 25, hwaccel="cuda")))
        stored = np.stack(list(timeline.iter_stored_frames(example_face, hwaccel="cuda")))
    np.testing.assert_array_equal(first, cpu)
    np.testing.assert_array_equal(again, cpu)
    np.testing.assert_array_equal(stored, np.stack(list(timeline.iter_stored_frames(example_face))))
    said = [r.getMessage() for r in caplog.records if "hardware video decoding" in r.getMessage()]
    assert len(said) == 1 and "(cuda)" in said[0] and "decoding on the CPU" in said[0], said


def test_a_broken_file_with_hardware_decode_is_the_file_s_error(tmp_path, monkeypatch, caplog):
    """A file that no decoder reads gives its own error; the hardware decoder is not blamed (nor given up on)."""
    from latentsync.media import timeline, video

    monkeypatch.setattr(video, "_HWACCEL_FAILED", set())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    with caplog.at_level("WARNING", logger="latentsync.media.video"):
        with pytest.raises(InvalidVideoError, match="cannot read video"):
            next(iter_frames(broken, 25, hwaccel="cuda"))
        with pytest.raises(InvalidVideoError, match="cannot read video"):
            next(timeline.iter_stored_frames(broken, hwaccel="cuda"))
    assert video.worth_trying("cuda")
    assert not [r for r in caplog.records if "hardware video decoding" in r.getMessage()]


@pytest.mark.skipif(not _nvdec_works(), reason="needs an NVIDIA GPU (NVDEC)")
def test_hardware_decode_gives_the_cpu_frames(example_face, caplog):
    """NVDEC's frames, downloaded and converted to RGB by ffmpeg, are the CPU decoder's (H.264 decoding is exact)."""
    from latentsync.media import timeline

    with caplog.at_level("WARNING"):
        gpu = np.stack(list(iter_frames(example_face, 25, hwaccel="cuda")))
        stored = np.stack(list(timeline.iter_stored_frames(example_face, hwaccel="cuda")))
    assert not [r for r in caplog.records if "hardware video decoding" in r.getMessage()]
    np.testing.assert_array_equal(gpu, np.stack(list(iter_frames(example_face, 25))))
    np.testing.assert_array_equal(stored, np.stack(list(timeline.iter_stored_frames(example_face))))


def test_pipeline_hardware_decode_option(tiny_pipe, example_face, monkeypatch):
    """``enable_hardware_decode`` names an ffmpeg hardware decoder (a clear error otherwise), and the pipeline's
    video reader then asks for it; ``None`` turns it off."""
    from latentsync.media import video

    with pytest.raises(ValueError, match="unknown hardware decoder 'nvdecc'; this ffmpeg has: .*cuda"):
        tiny_pipe.enable_hardware_decode("nvdecc")
    asked = []
    real = video.iter_frames
    monkeypatch.setattr(video, "iter_frames",
                        lambda path, fps, hwaccel=None, *hdr: asked.append(hwaccel) or real(path, fps, None, *hdr))
    try:
        tiny_pipe.enable_hardware_decode()
        source = tiny_pipe._open_video(example_face, 25)
        assert len(list(source)) == source.expected_frames == 75  # a 3 s clip; frames from the CPU fallback
        tiny_pipe.enable_hardware_decode(None)
        next(iter(tiny_pipe._open_video(example_face, 25)))
    finally:
        tiny_pipe.enable_hardware_decode(None)
    assert asked == ["cuda", None]


# ---------------------------------------------------------------------------------------------------- hardware encode
def _frames(n: int = 12, size: tuple[int, int] = (96, 128)) -> list[np.ndarray]:
    """A smooth picture moving to the right (content an encoder can keep well)."""
    y, x = np.mgrid[: size[0], : size[1]]
    base = np.stack([127 + 100 * np.sin(x / 9), 127 + 100 * np.cos(y / 7), 127 + 60 * np.sin((x + y) / 13)], -1)
    return [np.roll(base, 3 * k, axis=1).astype(np.uint8) for k in range(n)]


def _write_with(tmp_path, name: str, encoder: str | None, timed: bool = False, **options):
    from latentsync.media import timeline

    frames = _frames()
    path = tmp_path / name
    if timed:
        writer = timeline.TimedVideoWriter(path, np.arange(len(frames)) / 25.0, encoder=encoder, **options)
    else:
        writer = VideoWriter(path, 25, encoder=encoder, **options)
    with writer:
        for frame in frames:
            writer.write(frame)
    return np.stack(list(iter_frames(path, None)))


@pytest.mark.skipif(_nvdec_works(), reason="this machine has a CUDA GPU: NVENC may start, no fallback")
def test_hardware_encode_falls_back_to_libx264_once(tmp_path, monkeypatch, caplog):
    """Without a GPU NVENC cannot start: both writers (ffmpeg at a fixed rate, PyAV with timestamps) and the live
    sink encode with libx264 instead, after one warning for the whole process; the files are libx264's."""
    from latentsync.media import pipes, video

    monkeypatch.setattr(video, "_ENCODER_WORKS", {})
    assert "h264_nvenc" in video.hardware_encoders()  # the bundled ffmpeg has it
    with caplog.at_level("WARNING", logger="latentsync.media.video"):
        plain = _write_with(tmp_path, "gpu.mp4", "h264_nvenc")
        timed = _write_with(tmp_path, "gpu_timed.mp4", "h264_nvenc", timed=True)
        sink = pipes.LiveVideoSink(os.fspath(tmp_path / "live.mp4"), 25, encoder="h264_nvenc")
        sink.write_audio(np.zeros(16000, np.float32))
        for frame in _frames():
            sink.write(frame)
        sink.close()
    np.testing.assert_array_equal(plain, _write_with(tmp_path, "cpu.mp4", None))
    np.testing.assert_array_equal(timed, _write_with(tmp_path, "cpu_timed.mp4", None, timed=True))
    assert probe_video(tmp_path / "live.mp4").has_audio
    said = [r.getMessage() for r in caplog.records if "hardware video encoding" in r.getMessage()]
    assert len(said) == 1 and "(h264_nvenc)" in said[0] and "encoding with libx264 on the CPU" in said[0], said


@pytest.mark.skipif(_nvdec_works(), reason="this machine has a CUDA GPU: PyAV may open NVENC, no fallback")
def test_pyav_refusing_the_gpu_encoder_falls_back_before_any_frame(tmp_path, monkeypatch, caplog):
    """When the ffmpeg binary's encoder works but PyAV's cannot open (its own build, or no GPU), the timed writer
    notices when it opens the stream and writes with libx264: same file as asking for libx264."""
    from latentsync.media import timeline, video

    monkeypatch.setattr(video, "_ENCODER_WORKS", {"h264_nvenc": True})  # as if the probe had passed
    real_open = timeline.TimedVideoWriter._add_stream
    opened = []
    monkeypatch.setattr(timeline.TimedVideoWriter, "_add_stream",
                        lambda self, codec, w, h: opened.append(codec) or real_open(self, codec, w, h))
    with caplog.at_level("WARNING", logger="latentsync.media.video"):
        frames = _write_with(tmp_path, "timed.mp4", "h264_nvenc", timed=True)
    assert opened == ["h264_nvenc", "libx264"]
    np.testing.assert_array_equal(frames, _write_with(tmp_path, "cpu.mp4", None, timed=True))
    assert any("hardware video encoding (h264_nvenc)" in r.getMessage() for r in caplog.records)
    assert video._ENCODER_WORKS["h264_nvenc"] is False  # not tried again in this process


@pytest.mark.skipif(not _nvdec_works(), reason="needs an NVIDIA GPU (NVENC)")
def test_hardware_encode_on_a_gpu_is_close_to_libx264(tmp_path, caplog):
    """NVENC at the default quality: no fallback, and its frames within a few grey levels of libx264's."""
    with caplog.at_level("WARNING"):
        gpu = _write_with(tmp_path, "gpu.mp4", "h264_nvenc").astype(np.float64)
    assert not [r for r in caplog.records if "hardware video encoding" in r.getMessage()]
    cpu = _write_with(tmp_path, "cpu.mp4", None).astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((gpu - cpu) ** 2))
    assert gpu.shape == cpu.shape and psnr > 30, psnr


def test_pipeline_hardware_encode_option(tiny_pipe):
    """``enable_hardware_encode`` names a GPU encoder this ffmpeg has (a clear error otherwise); ``None`` turns it
    off. (That a run with it writes the video is in test_cli.)"""
    with pytest.raises(ValueError, match="unknown hardware encoder 'nvenc2'; this ffmpeg has: h264_nvenc"):
        tiny_pipe.enable_hardware_encode("nvenc2")
    tiny_pipe.enable_hardware_encode()
    assert tiny_pipe._video_encoder == "h264_nvenc"
    tiny_pipe.enable_hardware_encode(None)
    assert tiny_pipe._video_encoder is None


# ---------------------------------------------------------------------------------------------------- pipes
def test_audio_from_a_pipe_and_an_empty_or_garbled_one(tmp_path, example_speech):
    """Speech read from a byte stream comes in chunks that add up to the file's samples; an empty stream or one
    that holds no audio is one clear error."""
    from latentsync.media.pipes import read_audio_chunks

    with open(example_speech, "rb") as fh:
        chunks = list(read_audio_chunks(fh, seconds=0.5))
    assert len(chunks) > 1 and all(len(c) == 8000 for c in chunks[:-1])
    np.testing.assert_allclose(np.concatenate(chunks), load_audio(example_speech), atol=1e-4)
    for name, data in (("empty", b""), ("garbled", b"not audio at all " * 200)):
        (tmp_path / name).write_bytes(data)
        with open(tmp_path / name, "rb") as fh, pytest.raises(InvalidAudioError, match="no audio arrived on the pipe"):
            list(read_audio_chunks(fh))


def test_frames_in_memory_in_diffusers_forms_read_as_the_uint8_frames():
    """Float tensors (T, 3, H, W) in [0, 1] or [-1, 1] (what diffusers' video pipelines and this pipeline's
    ``output_type="pt"`` return), float arrays, grey and RGBA frames and one PIL image are read as RGB uint8 frames."""
    from PIL import Image

    from latentsync.media.video import open_frames

    frames = np.stack([_gradient(i) for i in range(3)])
    as_tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    for video in (as_tensor, as_tensor * 2 - 1, as_tensor.bfloat16(), list(as_tensor), frames / 255.0,
                  torch.from_numpy(frames), [np.dstack([f, np.full(f.shape[:2], 7, np.uint8)]) for f in frames]):
        read = np.stack(list(open_frames(video)))
        assert read.dtype == np.uint8 and np.abs(read.astype(int) - frames).max() <= 2
    grey = np.stack(list(open_frames([f[..., 0] for f in frames])))
    assert np.array_equal(grey, np.repeat(frames[..., :1], 3, axis=-1))
    still = list(open_frames(Image.fromarray(frames[0])))
    assert len(still) == 1 and np.array_equal(still[0], frames[0])


@pytest.mark.parametrize("video, message", [
    (np.full((2, 8, 8, 3), 255.0, np.float32), r"values in \[0, 1\] .* got 255 to 255"),
    (np.zeros((8, 8, 3), np.uint8), r"one picture: pass \[picture\]"),
    ([np.zeros((8, 8, 3), np.uint16)], "must be an RGB image.* got uint16"),
])
def test_frames_in_memory_that_cannot_be_read_are_named(video, message):
    from latentsync.media.video import open_frames

    with pytest.raises(InvalidVideoError, match=message):
        open_frames(video)


def test_samples_in_memory_pcm_and_channels():
    """int16 (and other PCM) samples are scaled to [-1, 1]; stereo (C, N) and (N, C) is mixed down to mono."""
    tone = (0.5 * np.sin(np.arange(1600) / 5.0)).astype(np.float32)
    pcm = np.round(tone * 32768).astype(np.int16)
    assert np.abs(media_audio.as_samples(pcm) - tone).max() < 1e-4
    assert np.abs(media_audio.as_samples(((tone + 1) * 128).astype(np.uint8)) - tone).max() < 0.01
    for stereo in (np.stack([tone, tone]), np.stack([tone, tone], 1), torch.from_numpy(np.stack([tone, tone]))):
        assert np.allclose(media_audio.as_samples(stereo), tone)


@pytest.mark.parametrize("audio, message", [
    ((np.zeros(16000, np.float32), 16000), r"\(samples, sample rate\) pair"),
    (b"RIFF", "a file path or 16 kHz samples"),
    (np.full(100, 20000.0, np.float32), r"must be in \[-1, 1\], got a peak of 20000"),
    (np.zeros((2, 2, 100), np.float32), "mono"),
])
def test_samples_in_memory_that_cannot_be_read_are_named(audio, message):
    with pytest.raises(InvalidAudioError, match=message):
        media_audio.as_samples(audio)


def test_headerless_pcm_from_a_pipe(tmp_path, example_speech):
    """Raw 16-bit PCM (a TTS engine's "raw" output) has no header for ffmpeg to recognise: without its format it
    is one error that says what to give (it was "cannot read audio from the pipe: Error opening output files:
    Invalid argument"); with ``pcm=(rate, channels)`` it is read as the same speech."""
    from latentsync.media.pipes import read_audio_chunks

    raw = tmp_path / "speech.s16le"
    ffmpeg("-i", os.fspath(example_speech), "-t", "2", "-f", "s16le", os.fspath(tmp_path / "mono16k.s16le"))
    with open(tmp_path / "mono16k.s16le", "rb") as fh, \
            pytest.raises(InvalidAudioError, match=r"headerless 16-bit PCM .*--pcm RATE"):
        list(read_audio_chunks(fh))
    ffmpeg("-i", os.fspath(example_speech), "-t", "2", "-ar", "22050", "-ac", "2", "-f", "s16le", os.fspath(raw))
    with open(raw, "rb") as fh:
        samples = np.concatenate(list(read_audio_chunks(fh, pcm=(22050, 2))))
    expected = load_audio(example_speech)[:len(samples)]
    assert abs(len(samples) - 32000) < 50
    assert np.corrcoef(samples[:len(expected)], expected)[0, 1] > 0.99


def test_frames_at_their_times_become_a_constant_rate():
    """A live output through a pipe has no timestamps: frames of a variable-rate avatar are repeated or dropped by
    their time, so the picture lasts as long as the sound (written one after the other at the typical rate, a
    stream of 60 and 15 fps stretches drifted by seconds a minute)."""
    from latentsync.media.pipes import at_constant_rate

    times = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5]  # 10, 20 and 5 fps stretches
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(len(times))]
    out = [int(f[0, 0, 0]) for f in at_constant_rate(zip(times, images), fps=10)]
    assert out == [0, 1, 2, 4, 4, 5]  # slot k at k / 10 s shows the frame on screen then; the last lasts one slot
    rng = np.random.default_rng(0)
    steps = rng.choice([1 / 60, 1 / 30, 1 / 15], size=3600)  # a minute and more of a phone's variable rate
    times = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    count = sum(1 for _ in at_constant_rate(((t, images[0]) for t in times), fps=30))
    assert abs(count / 30 - (times[-1] + 1 / 30)) <= 1 / 30


@pytest.mark.parametrize("tag_colors", [True, False])
def test_live_output_keeps_the_pixel_shape_and_colour_tag(tmp_path, tag_colors):
    """The live sink records what the offline writers record: an anamorphic input's pixel shape, and the YUV matrix
    unless the input leaves its own unnamed (it wrote square pixels, untagged, whatever the input)."""
    import subprocess
    from fractions import Fraction

    from conftest import FFMPEG

    from latentsync.media import pipes

    out = tmp_path / "live.mp4"
    sink = pipes.LiveVideoSink(os.fspath(out), 25, sample_aspect=Fraction(4, 3), tag_colors=tag_colors)
    frames = _frames()
    # the sound of every frame first, as a live run has it: ffmpeg stops reading frames that run ahead of the sound
    # (0.2 s of sound for 0.48 s of frames hung a CI run)
    sink.write_audio(np.zeros(SAMPLE_RATE * len(frames) // 25, np.float32))
    for frame in frames:
        sink.write(frame)
    sink.close()
    assert probe_video(out).sample_aspect == Fraction(4, 3)
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", os.fspath(out)], capture_output=True, text=True,
                            check=False).stderr
    assert ("yuv420p(tv, smpte170m" in header) == tag_colors, header


@pytest.mark.parametrize("where", ["audio thread", "ffmpeg"])
def test_live_sink_interrupted_while_closing_ends_its_ffmpeg(tmp_path, monkeypatch, where):
    """Ctrl-C while the live sink completes its output (waiting for its audio thread, or for ffmpeg to end) left its
    ffmpeg running until the Python process ended (in its own session, the terminal's Ctrl-C never reaches it; a
    notebook or service kept it); the sink now kills it, waits for it and joins its audio thread before the
    interrupt goes on, and later calls of close do nothing."""
    psutil = pytest.importorskip("psutil")
    from latentsync.media import pipes

    sink = pipes.LiveVideoSink(os.fspath(tmp_path / "live.mp4"), 25)
    frames = _frames()
    sink.write_audio(np.zeros(SAMPLE_RATE * len(frames) // 25, np.float32))
    for frame in frames:
        sink.write(frame)
    proc, thread = sink._proc, sink._audio_thread
    owner, name = (thread, "join") if where == "audio thread" else (proc, "wait")
    real, calls = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            sink.close()
        assert proc.returncode is not None and not psutil.pid_exists(proc.pid)  # ended and waited for
        assert not thread.is_alive() and not sink.finished
        sink.close()
    finally:  # the old sink's ffmpeg and thread
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sink._audio.put(None)


# ---------------------------------------------------------------------------------------------------- HDR input
REFERENCE_TONE_MAP = ("setparams=color_primaries=bt2020:colorspace=bt2020nc,zscale=t=linear:npl=100,format=gbrpf32le,"
                      "zscale=p=bt709,tonemap=tonemap=hable:desat=0,zscale=t=bt709,format=gbrp")
"""The usual zscale + tonemap chain (HDR to SDR BT.709), written out here as the readers' reference; BT.2020 where
the file does not say."""


def _ffmpeg_rgb(path, *filters: str) -> np.ndarray:
    """Every frame of ``path`` as the ffmpeg binary decodes it to RGB uint8, through ``filters`` (none: straight)."""
    import subprocess

    from conftest import FFMPEG

    cmd = [FFMPEG, "-nostdin", "-v", "error", "-i", os.fspath(path), *(("-vf", ",".join(filters)) if filters else ()),
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    data = subprocess.run(cmd, capture_output=True, check=True).stdout
    info = probe_video(path)
    return np.frombuffer(data, np.uint8).reshape(-1, info.height, info.width, 3)


@pytest.fixture(scope="module")
def hdr_clips(tmp_path_factory):
    """ffmpeg's test picture, 64 x 48, 10-bit and tagged BT.2020: HLG in HEVC/MP4 (as an iPhone records) with a
    0.2 s gap after frame 4 (a variable frame rate), PQ in H.264/MKV, HLG that names its transfer only; and the same
    picture as an 8-bit SDR clip."""
    folder = tmp_path_factory.mktemp("hdr")
    clips = {}
    for name, transfer, codec, ext in (("hlg", "arib-std-b67", "libx265", "mp4"),
                                       ("pq", "smpte2084", "libx264", "mkv")):
        clips[name] = folder / f"{name}.{ext}"
        gap = "+0.2*gte(N\\,5)" if name == "hlg" else ""
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "10", "-vf",
               f"setpts=(N*0.04{gap})/TB,setparams=color_primaries=bt2020:color_trc={transfer}:colorspace=bt2020nc:"
               "range=tv", "-fps_mode", "passthrough", "-c:v", codec, "-pix_fmt", "yuv420p10le",
               *(("-x265-params", "log-level=error") if codec == "libx265" else ()), os.fspath(clips[name]))
    clips["hlg_trc_only"] = folder / "hlg_trc_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "10", "-vf",
           "setparams=color_trc=arib-std-b67:range=tv", "-c:v", "libx264", "-pix_fmt", "yuv420p10le",
           os.fspath(clips["hlg_trc_only"]))
    clips["sdr"] = folder / "sdr.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "10", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-colorspace", "bt709", os.fspath(clips["sdr"]))
    return clips


def test_the_probe_reports_the_hdr_transfer(hdr_clips, tmp_path):
    """The full probe and the header-only one (remembered per file version: a file replaced under the same name is
    probed again)."""
    import shutil

    from latentsync.media.probe import probe_hdr

    assert [probe_video(hdr_clips[name]).hdr for name in ("hlg", "pq", "hlg_trc_only", "sdr")] == \
        ["hlg", "pq", "hlg", None]
    clip = tmp_path / "clip.mp4"
    shutil.copy(hdr_clips["sdr"], clip)
    assert probe_hdr(clip) is None
    shutil.copy(hdr_clips["hlg"], clip)
    assert probe_hdr(clip) == "hlg" and probe_hdr(tmp_path / "missing.mp4") is None


def test_a_file_rewritten_in_place_with_its_old_size_and_time_is_probed_again(hdr_clips, tmp_path):
    """A clip rewritten in place with other content of the same size, its modification time then put back (as
    ``os.utime``, ``touch -r``, ``rsync --times`` or ``cp -p`` do): the probes remembered per file version (the full
    one, the HDR one and the speech track's) read the new content; they returned the old file's answers."""
    from latentsync.media.probe import probe_hdr

    other = write_video(tmp_path / "other.mp4", [_gradient(i) for i in range(10)], audio=np.zeros(SAMPLE_RATE // 2))
    old, new = hdr_clips["hlg"].read_bytes(), other.read_bytes()
    size = max(len(old), len(new))  # zeros after an MP4's last box are ignored
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(old.ljust(size, b"\0"))
    before = clip.stat()
    info = probe_video(clip)
    assert (info.width, info.hdr, info.has_audio) == (64, "hlg", False)
    assert probe_hdr(clip) == "hlg" and speech_track(clip).tracks == 0
    with open(clip, "r+b") as fh:  # the same file (inode), other bytes
        fh.write(new.ljust(size, b"\0"))
    os.utime(clip, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = clip.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    info = probe_video(clip)
    assert (info.width, info.hdr, info.has_audio) == (32, None, True)
    assert probe_hdr(clip) is None and speech_track(clip).tracks == 1


@pytest.mark.parametrize("name", ["hlg", "pq", "hlg_trc_only"])
def test_hdr_frames_are_tone_mapped_by_both_readers(hdr_clips, name, caplog):
    """HDR frames come out as the reference chain tone-maps them to SDR BT.709, from the 25 fps reader and the
    input-timeline reader alike, every stored frame kept by the latter (they came out washed out or blown out, read
    straight to 8-bit RGB); one INFO line says so."""
    import logging

    from latentsync.media.timeline import iter_stored_frames

    path = hdr_clips[name]
    reference = _ffmpeg_rgb(path, REFERENCE_TONE_MAP).astype(int)
    straight = _ffmpeg_rgb(path).astype(int)
    assert np.abs(reference - straight).mean() > 10  # the test picture does look different tone-mapped
    with caplog.at_level(logging.INFO, logger="latentsync.media.video"):
        stored = np.stack(list(iter_stored_frames(path))).astype(int)
        at_25 = np.stack(list(iter_frames(path))).astype(int)
    assert len(stored) == len(read_timestamps(path)[0]) == 10
    assert np.abs(stored - reference).max() <= 2
    # the 25 fps reader repeats frame 4 through the HLG clip's gap: compare the frames before it, and the last
    assert np.abs(at_25[:5] - reference[:5]).max() <= 2 and np.abs(at_25[-1] - reference[-1]).max() <= 2
    assert np.abs(at_25[:5] - stored[:5]).max() <= 2
    assert sum("tone-mapped to SDR BT.709" in r.getMessage() for r in caplog.records) == 1


def test_sdr_frames_read_as_before(hdr_clips):
    """An SDR clip is not tone-mapped: both readers give ffmpeg's straight RGB conversion (the 25 fps reader) and
    PyAV's (the input-timeline reader), bit for bit."""
    import av

    from latentsync.media.timeline import iter_stored_frames

    path = hdr_clips["sdr"]
    np.testing.assert_array_equal(np.stack(list(iter_frames(path))), _ffmpeg_rgb(path))
    with av.open(os.fspath(path)) as container:
        expected = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    np.testing.assert_array_equal(np.stack(list(iter_stored_frames(path))), expected)
