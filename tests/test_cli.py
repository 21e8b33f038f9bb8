"""The `latentsync` command line on the tiny model."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from conftest import write_wav
from latentsync.commands import main
from latentsync.media import probe_video


def test_make_tiny_then_run(tmp_path, example_face):
    model = tmp_path / "tiny"
    assert main(["make-tiny", str(model)]) == 0
    assert (model / "model_index.json").is_file() and (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    t = np.arange(8000) / 16000
    speech = write_wav(tmp_path / "s.wav", 0.3 * np.sin(2 * np.pi * 180 * t))
    out = tmp_path / "outputs" / "out.mp4"  # a folder that does not exist yet, as in the README's quick start
    code = main(["--model", str(model), "--video", str(example_face), "--audio", str(speech), "--output", str(out),
                 "--steps", "1", "--seed", "3", "--device", "cpu", "--dtype", "fp32"])
    assert code == 0 and probe_video(out).has_audio


def test_bad_input_exits_with_message(tmp_path, example_face, caplog, tiny_model_dir):
    out = tmp_path / "out.mp4"
    code = main(["--model", str(tiny_model_dir), "--video", str(tmp_path / "missing.mp4"), "--audio",
                 str(example_face), "--output", str(out)])
    assert code == 2 and not out.exists()
    assert "video file not found" in caplog.text


def test_live_from_a_pipe(tmp_path, example_face, example_speech, tiny_model_dir_64):
    """``latentsync avatar`` then ``--audio -``: speech from standard input, fragmented MP4 (with the sound) or raw
    RGB frames to standard output."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ffmpeg
    from latentsync.media import load_audio

    model, avatar = tiny_model_dir_64, tmp_path / "avatar"
    assert main(["avatar", str(example_face), str(avatar), "--model", str(model), "--device", "cpu"]) == 0
    speech = tmp_path / "speech.wav"
    ffmpeg("-i", str(example_speech), "-t", "1", str(speech))
    base = [str(Path(sys.executable).parent / "latentsync"), "--model", str(model), "--avatar", str(avatar), "--audio", "-",
            "--output", "-", "--steps", "1", "--device", "cpu"]
    with open(speech, "rb") as stdin:
        mp4 = subprocess.run(base, stdin=stdin, capture_output=True, check=True).stdout
    (tmp_path / "live.mp4").write_bytes(mp4)
    assert b"moof" in mp4[:200_000]  # fragmented: playable while written
    assert probe_video(tmp_path / "live.mp4").has_audio and abs(len(load_audio(tmp_path / "live.mp4")) - 16000) < 1600
    with open(speech, "rb") as stdin:
        raw = subprocess.run(base + ["--live-format", "raw"], stdin=stdin, capture_output=True, check=True).stdout
    assert len(raw) == 25 * 384 * 384 * 3  # 1 s at 25 fps of the 384 x 384 example


def test_keep_input_frame_rate(tmp_path, example_face, tiny_model_dir, caplog, monkeypatch):
    """``--fps input`` keeps the input's timestamps; with ``--hw-encode`` (NVENC) the video is written too, here by
    libx264 after a warning when the machine has no GPU."""
    from conftest import ffmpeg
    from latentsync.media import video
    from latentsync.media.timeline import read_timestamps

    monkeypatch.setattr(video, "_ENCODER_WORKS", {})

    clip = tmp_path / "face50.mp4"
    ffmpeg("-i", str(example_face), "-t", "0.6", "-vf", "fps=50", str(clip))
    t = np.arange(8000) / 16000
    speech = write_wav(tmp_path / "s.wav", 0.3 * np.sin(2 * np.pi * 180 * t))
    out = tmp_path / "out.mp4"
    assert main(["--model", str(tiny_model_dir), "--video", str(clip), "--audio", str(speech), "--output", str(out),
                 "--fps", "input", "--steps", "1", "--device", "cpu", "--hw-encode"]) == 0
    assert torch.cuda.is_available() or "encoding with libx264 on the CPU" in caplog.text
    times, _ = read_timestamps(out)
    assert len(times) == 25 and np.allclose(times, np.arange(25) / 50)  # 0.5 s of a 50 fps input


@pytest.mark.parametrize("args, message", [
    (["--seed", str(2**64)], "argument --seed: expected an integer from 0 to 2**63 - 1"),
    (["--seed", "-1"], "argument --seed: expected an integer from 0 to 2**63 - 1"),
    (["--fps", "0"], "argument --fps: expected input or a frame rate between 1 and 240, got '0'"),
    (["--fps", "nan"], "argument --fps: expected input or a frame rate between 1 and 240, got 'nan'"),
    (["--hw-encode", "mpeg2"], "--hw-encode: unknown hardware encoder 'mpeg2'"),
    (["--hw-decode", "floppy"], "--hw-decode: unknown hardware decoder 'floppy'"),
    # options of live runs without --audio - (they were silently ignored, or "-" was an unsupported format)
    (["--live-format", "raw"], "--live-format: only for live runs, which read the speech from standard input"),
    (["--chunk-seconds", "0.5"], "--chunk-seconds: only for live runs"),
    (["--audio-track", "0"], "argument --audio-track: expected an audio track number from 1 (track 1 is the file's"),
    (["--pcm", "22050"], "--pcm: only for live runs"),
    (["--pcm", "22050:0"], "argument --pcm: expected RATE[:CHANNELS]"),
    (["--pcm", "s16le"], "argument --pcm: expected RATE[:CHANNELS]"),
])
def test_bad_options_are_refused_before_the_model_loads(tmp_path, example_face, example_speech, capsys, args,
                                                        message):
    """Option values the run cannot use end as a usage error (status 2), before any model is looked for (the model
    folder here does not exist)."""
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "no-model"), "--video", str(example_face), "--audio", str(example_speech),
              "--output", str(out), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not out.exists()


def test_audio_track_errors_are_one_line_before_the_model_loads(tmp_path, example_face, two_track_video, capsys,
                                                                caplog):
    """``--audio-track`` with a number the file does not have says how many tracks it has, with a live pipe it says
    that a pipe has no tracks to choose, with a voice per face that each voice's track is chosen in ``--audio-for
    FACE:TRACK=FILE``; that form checks its track as ``--audio-track`` does: all before any model is looked for (the
    model folder here does not exist)."""
    import logging

    out = tmp_path / "out.mp4"
    base = ["--model", str(tmp_path / "no-model"), "--video", str(example_face), "--output", str(out)]
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main([*base, "--audio", str(two_track_video), "--audio-track", "3"]) == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"--audio-track 3: {two_track_video} has 2 audio tracks (numbered from 1)"]
        caplog.clear()
        assert main([*base, "--audio-for", f"0:3={two_track_video}"]) == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"audio for face 0 track 3: {two_track_video} has 2 audio tracks (numbered from 1)"]
        caplog.clear()
        assert main([*base, "--audio-for", f"0:1={two_track_video}"]) == 2
        assert f"{two_track_video} (audio for face 0) is silent" in caplog.text  # track 1 is, track 2 is the voice
    for args, message in [(["--audio-for", f"0={two_track_video}", "--audio-track", "2"],
                           "--audio-track: with --audio-for, give each voice's track as --audio-for FACE:TRACK=FILE"),
                          (["--audio-for", f"0:0={two_track_video}"], "expected FACE:TRACK=FILE with an audio track"),
                          (["--audio-for", f"0:a={two_track_video}"], "expected FACE:TRACK=FILE with an audio track"),
                          (["--audio-for", f"a:1={two_track_video}"], "expected FACE=FILE or FACE:TRACK=FILE")]:
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, args
    with pytest.raises(SystemExit) as exit_info:
        main([*base[:-1], "-", "--audio", "-", "--audio-track", "2"])
    assert exit_info.value.code == 2 and "--audio-track: a pipe (--audio -) carries one audio stream" in \
        capsys.readouterr().err
    assert not out.exists()


def test_a_tilde_the_shell_left_is_the_home_folder(tmp_path, example_face, example_speech, caplog, monkeypatch):
    """The shell does not expand ``~`` after ``--output=`` (nor in quotes): the run does, so ``--output=~/out.mp4``
    is in the home folder, not in a new folder named ``~`` below the current one (which ``rm -rf ~`` would then
    remove along with the home folder). Here the output exists there, so the checks refuse it, naming the real path;
    the video, audio and voices are found there too."""
    import logging
    import shutil

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    shutil.copy(example_face, home / "face.mp4")
    shutil.copy(example_speech, home / "speech.wav")
    (home / "out.mp4").write_bytes(b"an earlier result")
    monkeypatch.setenv("HOME", os.fspath(home))
    monkeypatch.chdir(work)
    base = ["--model", os.fspath(tmp_path / "no-model"), "--video=~/face.mp4", "--output=~/out.mp4"]
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        for speech in (["--audio=~/speech.wav"], ["--audio-for=0=~/speech.wav"], ["--audio-for=0:1=~/speech.wav"]):
            caplog.clear()
            assert main([*base, *speech]) == 2
            assert [r.getMessage() for r in caplog.records] == [
                f"output file already exists: {home / 'out.mp4'} (pass --overwrite to replace it)"], speech
    assert list(work.iterdir()) == []


def test_errors_name_the_options_of_the_command_line():
    from latentsync.commands.run import _with_option_names

    assert _with_option_names("audio mapping key=3, but 1 face track(s)").startswith("--audio-for=3, but")
    assert _with_option_names("face_box_frame=999, but the video").startswith("--face-frame=999, but")
    assert _with_option_names("face_box must be (x, y, width, height)").startswith("--face must be")
    assert _with_option_names('output_fps must be "input"').startswith("--fps must be")


@pytest.fixture
def no_model_load(monkeypatch):
    """Make loading the pipeline fail: the checks under test must stop the run before it."""
    import latentsync.commands.avatar
    import latentsync.commands.live  # noqa: F401 (imported before run's function is patched: they bind it)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr("latentsync.commands.run.load_pipeline", refuse)
    monkeypatch.setattr("latentsync.commands.avatar.load_pipeline", refuse)
    monkeypatch.setattr("latentsync.commands.live.load_pipeline", refuse)


def test_avatar_command_refuses_bad_folders_before_loading(tmp_path, example_face, tiny_model_dir_64, caplog,
                                                           no_model_load):
    """``latentsync avatar VIDEO DIR`` never writes into a folder of the user's own files (its copy of the video is
    ``video.mp4``), refuses a file and an existing avatar without --overwrite, and checks the video, all before the
    model loads."""
    model = ["--model", str(tiny_model_dir_64), "--device", "cpu"]
    user = tmp_path / "videos"
    user.mkdir()
    (user / "video.mp4").write_bytes(b"the user's own video")
    (tmp_path / "a-file").write_text("x")
    done = tmp_path / "done"
    done.mkdir()
    (done / "avatar.json").write_text("{}")
    (done / "avatar.safetensors").write_bytes(b"")
    cases = [
        ([str(example_face), str(user)], "is a folder with other files, not an avatar"),
        ([str(example_face), str(tmp_path / "a-file")], "is a file: give a new folder"),
        ([str(example_face), str(tmp_path / "a-file" / "avatar")], "cannot create the avatar folder"),
        ([str(example_face), str(done)], "already holds an avatar (replace it with --overwrite"),
        ([str(tmp_path / "missing.mp4"), str(tmp_path / "new")], "video file not found"),
        ([str(example_face), str(tmp_path / "new"), "--syncnet", str(tmp_path / "no-syncnet")],
         "not found: --syncnet="),
    ]
    for args, message in cases:
        caplog.clear()
        assert main(["avatar", *args, *model]) == 2, args
        assert message in caplog.text, (args, caplog.text)
    assert (user / "video.mp4").read_bytes() == b"the user's own video"
    assert not (tmp_path / "new").exists()


def test_avatar_command_uses_its_syncnet(tmp_path, example_face, tiny_model_dir_64, monkeypatch):
    """``latentsync avatar --syncnet DIR`` loads that SyncNet (to find the speaking face); it used to be dropped."""
    loaded = []
    monkeypatch.setattr("latentsync.pipeline.LatentSyncPipeline.load_syncnet",
                        lambda self, source, **kwargs: loaded.append(source))
    syncnet = tmp_path / "syncnet"
    syncnet.mkdir()
    assert main(["avatar", str(example_face), str(tmp_path / "avatar"), "--model", str(tiny_model_dir_64),
                 "--device", "cpu", "--syncnet", str(syncnet)]) == 0
    assert loaded == [str(syncnet)]


def test_live_output_is_never_an_input_or_an_existing_file(tmp_path, example_face, tiny_model_dir_64, caplog,
                                                          no_model_load):
    """``--audio -`` writes its output as it goes: it refuses the input video (or a file of the avatar) as the
    output, and an existing file without --overwrite, before the model loads (it used to replace them)."""
    video = tmp_path / "face.mp4"
    video.write_bytes(example_face.read_bytes())
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"keep me")
    avatar = tmp_path / "avatar"
    avatar.mkdir()
    (avatar / "avatar.json").write_text('{"version": 1, "video": "video.mp4"}')
    (avatar / "avatar.safetensors").write_bytes(b"")
    (avatar / "video.mp4").write_bytes(b"the avatar's video")
    base = ["--model", str(tiny_model_dir_64), "--device", "cpu", "--audio", "-"]
    cases = [
        (["--video", str(video), "--output", str(video), "--overwrite"], "is the input file"),
        (["--video", str(video), "--output", str(existing)], "output file already exists"),
        (["--avatar", str(avatar), "--output", str(avatar / "video.mp4"), "--overwrite"], "is the input file"),
        (["--avatar", str(tmp_path / "no-avatar"), "--output", "-"], "not a prepared avatar (no such folder)"),
    ]
    for args, message in cases:
        caplog.clear()
        assert main([*base, *args]) == 2, args
        assert message in caplog.text, (args, caplog.text)
    assert video.read_bytes() == example_face.read_bytes() and existing.read_bytes() == b"keep me"
    assert (avatar / "video.mp4").read_bytes() == b"the avatar's video"


def test_live_run_from_a_terminal_is_refused_before_loading(tmp_path, example_face, tiny_model_dir_64, caplog,
                                                            monkeypatch, no_model_load):
    """``--audio -`` typed without a pipe: standard input is the terminal, and the run used to load the model and
    then wait for speech that never came; now one line before the model loads."""
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    out = tmp_path / "live.mp4"
    assert main(["--model", str(tiny_model_dir_64), "--device", "cpu", "--video", str(example_face), "--audio", "-",
                 "--output", str(out)]) == 2
    assert "standard input, which is a terminal here: pipe the audio in" in caplog.text and not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--face-frame", "-1"], "--face-frame must be an integer >= 0, got -1"),
    (["--face-index", "-1"], "--face-index must be an integer >= 0, got -1"),
])
def test_live_run_of_a_video_checks_its_face_options_before_loading(tmp_path, example_face, monkeypatch, caplog,
                                                                    no_model_load, option, message):
    """``--video FILE --audio -`` with a bad face option is one line in the options' words before the model loads
    (it loaded the model, and then refused "face_box_frame" or "face_index" in the Python API's words), as a run on
    a speech file does; both commands check an avatar's options with the one shared check
    (``latentsync.inputs.check_avatar_arguments``, no wrapper of their own)."""
    import io
    import sys

    import latentsync.commands.run as run_command

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(open(example_face, "rb")))
    out = tmp_path / "live.mp4"
    try:
        assert main(["--model", str(tmp_path / "no-model"), "--device", "cpu", "--video", str(example_face),
                     "--audio", "-", "--output", str(out), *option]) == 2
    finally:
        sys.stdin.close()
    assert message in caplog.text and not out.exists(), caplog.text
    assert not hasattr(run_command, "check_avatar_options")


def test_run_checks_lora_syncnet_and_avatar_before_loading(tmp_path, example_face, example_speech, tiny_model_dir_64,
                                                           caplog, no_model_load):
    """A missing --lora, --syncnet or --avatar folder is one line before the model loads (they were tracebacks
    after it), and the output may not be a file of the avatar."""
    avatar = tmp_path / "avatar"
    avatar.mkdir()
    (avatar / "avatar.json").write_text('{"version": 1, "video": "video.mp4"}')
    (avatar / "avatar.safetensors").write_bytes(b"")
    (avatar / "video.mp4").write_bytes(b"the avatar's video")
    base = ["--model", str(tiny_model_dir_64), "--device", "cpu", "--audio", str(example_speech)]
    out = ["--output", str(tmp_path / "out.mp4")]
    cases = [
        (["--video", str(example_face), *out, "--lora", str(tmp_path / "no-lora")], "not found: --lora="),
        (["--video", str(example_face), *out, "--syncnet", str(tmp_path / "no-sync")], "not found: --syncnet="),
        (["--avatar", str(tmp_path / "no-avatar"), *out], "not a prepared avatar (no such folder)"),
        (["--avatar", str(avatar), "--output", str(avatar / "video.mp4"), "--overwrite"], "is the input file"),
    ]
    for args, message in cases:
        caplog.clear()
        assert main([*base, *args]) == 2, args
        assert message in caplog.text, (args, caplog.text)
    assert (avatar / "video.mp4").read_bytes() == b"the avatar's video"


def test_live_run_stopped_by_ctrl_c_keeps_what_it_wrote(tmp_path, example_face, example_speech, tiny_model_dir_64):
    """Ctrl-C in a terminal (SIGINT to the whole process group) while speech is still being piped in: the run ends at
    once, says how many frames the live file holds (it said "nothing was written"), and the file plays. It used to
    wait for the speech pipe to close: the audio decoder, also interrupted, stayed blocked on its open input."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    model, avatar, out = tiny_model_dir_64, tmp_path / "avatar", tmp_path / "live.mp4"
    assert main(["avatar", str(example_face), str(avatar), "--model", str(model), "--device", "cpu"]) == 0
    command = [str(Path(sys.executable).parent / "latentsync"), "--model", str(model), "--avatar", str(avatar),
               "--audio", "-", "--output", str(out), "--steps", "1", "--device", "cpu"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.stdin.write(example_speech.read_bytes())  # 4 s of speech, and the pipe stays open (a live source)
        proc.stdin.flush()
        deadline = time.monotonic() + 240
        while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(3)  # a few windows more
        os.killpg(proc.pid, signal.SIGINT)
        start = time.monotonic()
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdin.close()
    log = proc.stderr.read().decode(errors="replace")
    assert code == 130 and seconds < 15, (code, seconds, log)
    assert re.search(r"stopped by Ctrl-C: .*live\.mp4 holds the \d+ frames made until then", log), log
    assert probe_video(out).duration > 0
