"""Reliability: bad, odd and interrupted runs, through the command line and the library.

Every row of ``ROWS`` runs twice, as ``latentsync ...`` and as ``pipe(...)``, and asserts the exit status (command line)
or the exception type (library), the first line of the message (one line, no traceback), that nothing is left in the
output folder or in the temporary folder, and that the inputs' checksums are unchanged. Rows that fail before the
model loads run the command line in a fresh interpreter, which also shows that it answers without importing torch.
Rows that need the model run on a 64 px tiny pipeline. Interrupts (Ctrl-C, SIGTERM, SIGKILL) run the command line as
a process and signal it mid-run; the app is stopped with SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, decode, ffmpeg, read_until, write_video, write_wav
from latentsync import (
    DeviceError,
    InvalidAudioError,
    InvalidOutputError,
    InvalidVideoError,
    LatentSyncInputError,
    ModelNotFoundError,
    NoFaceError,
)

STEPS = 1
RUN_CLI = ("import sys\nfrom latentsync.commands import main\ncode = main(sys.argv[1:])\n"
           "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\nsys.exit(code)\n")
CONSOLE_SCRIPT = "from latentsync.commands import entry\nentry()\n"  # what the installed `latentsync` runs


# ---------------------------------------------------------------------------------------------------- inputs
def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Every input file of the table, in one folder (their checksums must never change)."""
    d = tmp_path_factory.mktemp("inputs")
    face, speech = os.fspath(EXAMPLES / "face.mp4"), os.fspath(EXAMPLES / "speech.wav")
    # 12 frames of the example face, padded to 480 x 384 (landscape, so that rotation shows in the frame size)
    ffmpeg("-i", face, "-frames:v", "12", "-vf", "pad=480:384:48:0", "-c:v", "libx264", "-crf", "12",
           os.fspath(d / "face.mp4"))
    ffmpeg("-i", speech, "-t", "0.32", os.fspath(d / "speech.wav"))  # 8 output frames: one window
    ffmpeg("-i", speech, "-t", "0.32", "-c:a", "aac", os.fspath(d / "speech.mp4"))  # an .mp4 holding only audio
    ffmpeg("-i", speech, "-t", "0.1", os.fspath(d / "tenth.wav"))
    ffmpeg("-i", face, "-t", "2", "-c:v", "libx264", os.fspath(d / "two_seconds.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000", "-t", "600", os.fspath(d / "ten_minutes.wav"))
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-frames:v", "1", os.fspath(d / "still.png"))
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-frames:v", "1", os.fspath(d / "still.jpg"))
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-frames:v", "1", "-c:v", "libx264", os.fspath(d / "one_frame.mp4"))
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-vf", "scale=32:32", "-c:v", "libx264", os.fspath(d / "tiny32.mp4"))
    # stored sideways, with metadata that turns it upright
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-vf", "transpose=1", "-c:v", "libx264", "-crf", "12",
           os.fspath(d / "sideways.mp4"))
    ffmpeg("-display_rotation", "90", "-i", os.fspath(d / "sideways.mp4"), "-c", "copy", os.fspath(d / "rotated.mp4"))
    (d / "sideways.mp4").unlink()
    # a front camera's: stored mirrored (and sideways), with metadata that mirrors (and turns) it back
    for name, stored, display in (("mirrored", "hflip", ["-display_hflip"]),
                                  ("rotated_mirrored", "hflip,transpose=1",
                                   ["-display_rotation", "90", "-display_hflip"])):
        ffmpeg("-i", os.fspath(d / "face.mp4"), "-vf", stored, "-c:v", "libx264", "-crf", "12",
               os.fspath(d / "stored.mp4"))
        ffmpeg(*display, "-i", os.fspath(d / "stored.mp4"), "-c", "copy", os.fspath(d / f"{name}.mp4"))
        (d / "stored.mp4").unlink()
    # every third frame dropped, timestamps kept: frames 40 or 80 ms apart
    ffmpeg("-i", os.fspath(d / "face.mp4"), "-vf", r"select=not(eq(mod(n\,3)\,1))", "-fps_mode", "vfr",
           "-c:v", "libx264", os.fspath(d / "vfr.mp4"))
    write_video(d / "noface.mp4", [np.full((128, 128, 3), 90, np.uint8)] * 10)
    write_wav(d / "silent.wav", np.zeros(8000))
    _cut(d / "speech.wav", d / "truncated.wav", 0.7)  # the header promises more samples than the file holds
    _cut(d / "face.mp4", d / "truncated.mp4", 0.5)  # the index (moov) at the end is missing
    ffmpeg("-i", os.fspath(d / "two_seconds.mp4"), "-c", "copy", "-movflags", "+faststart",
           os.fspath(d / "faststart.mp4"))
    _cut(d / "faststart.mp4", d / "cut_download.mp4", 0.5)  # index first: readable, but the frames stop early
    (d / "faststart.mp4").unlink()
    rng = np.random.default_rng(0)
    (d / "random.mp4").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (d / "random.wav").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "text.wav").write_text("this is not audio\n")
    (d / "empty.mp4").write_bytes(b"")
    (d / "empty.wav").write_bytes(b"")
    (d / "a folder.mp4").mkdir()
    unicode = d / "vidéo à synchroniser 音声"
    unicode.mkdir()
    shutil.copy(d / "face.mp4", unicode / "visage parlant.mp4")
    shutil.copy(d / "speech.wav", unicode / "voix off.wav")
    return d


def checksums(folder: Path) -> dict[str, str]:
    return {os.fspath(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    """What a run left in a temporary folder (torch's own compile cache aside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_")) if folder.exists() \
        else []


# ---------------------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    """One case: inputs (names in the media folder), output (``out/<name>`` or a special form), and what the command
    line and the library must do. ``cli``/``lib`` are ``(exit status, message)`` / ``(exception, message)``; a None
    exception means the run succeeds, and the message is then a warning that must be logged."""

    video: str = "face.mp4"
    audio: str = "speech.wav"
    output: str = "out/result.mp4"
    cli: tuple[int, str] = (0, "")
    lib: tuple[type[BaseException] | None, str] = (None, "")
    args: list[str] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    model: str | None = None  # --model: None = the 64 px test model, "" = none given (the default model)
    on_cli: bool = True  # False: a library argument the command line does not have
    needs_model: bool = False  # the command line fails or succeeds only once the model runs
    imports_torch: bool = False  # the command line fails before loading the model, but after importing torch
    lib_check: str = "pipe"  # "pipe": pipe(...); "model" / "device": the library's model and device checks
    slow: bool = False


def _error(exc: type[BaseException], message: str) -> dict:
    return {"cli": (2, message), "lib": (exc, message)}


ROWS: dict[str, Row] = {
    # --- the video
    "missing video": Row(video="missing.mp4", **_error(InvalidVideoError, r"video file not found: .*missing\.mp4")),
    "empty video": Row(video="empty.mp4", **_error(InvalidVideoError, r"video file is empty \(0 bytes\)")),
    "text file as video": Row(video="text.mp4", **_error(InvalidVideoError, r"cannot read video .*text\.mp4: not a "
                                                                           "format ffmpeg reads")),
    "truncated video": Row(video="truncated.mp4", **_error(InvalidVideoError, r"cannot read video .*truncated\.mp4: "
                                                                              r".*damaged or incomplete file")),
    "random bytes as video": Row(video="random.mp4", **_error(InvalidVideoError, r"cannot read video .*random\.mp4")),
    "audio-only file as video": Row(video="speech.mp4", **_error(InvalidVideoError, r"no video stream in .*speech")),
    "folder as video": Row(video="a folder.mp4", **_error(InvalidVideoError, r"video path is a folder")),
    # --- the audio
    "missing audio": Row(audio="missing.wav", **_error(InvalidAudioError, r"audio file not found: .*missing\.wav")),
    "empty audio": Row(audio="empty.wav", **_error(InvalidAudioError, r"audio file is empty \(0 bytes\)")),
    "text file as audio": Row(audio="text.wav", **_error(InvalidAudioError, r"cannot read audio from .*text\.wav: ")),
    "random bytes as audio": Row(audio="random.wav", **_error(InvalidAudioError, r"cannot read audio from .*random")),
    "video without audio as audio": Row(audio="face.mp4", **_error(InvalidAudioError, r"no audio stream in .*face")),
    "silent audio": Row(audio="silent.wav", **_error(InvalidAudioError, r"audio track of .*silent\.wav is silent")),
    # --- the output
    "output = input video": Row(output="=video", **_error(InvalidOutputError, r"output .*face\.mp4 is the input file")),
    "output = audio file": Row(audio="speech.mp4", output="=audio",
                               **_error(InvalidOutputError, r"output .*speech\.mp4 is the input file")),
    "output = hard link to the video": Row(output="hardlink", **_error(InvalidOutputError, r"is the input file")),
    "output = symbolic link to the video": Row(output="symlink", **_error(InvalidOutputError, r"is the input file")),
    "output is a folder": Row(output="folder", **_error(InvalidOutputError, r"output path is a folder")),
    # a folder's name that does not exist yet: it was "unsupported output format (no extension)"
    "output is a new folder's name": Row(output="new-folder/",
                                         **_error(InvalidOutputError, r"output path is a folder: .*new-folder/ ")),
    "unsupported output extension": Row(output="out/result.gif",
                                        **_error(InvalidOutputError, r"unsupported output format \.gif")),
    "output without extension": Row(output="out/result",
                                    **_error(InvalidOutputError, r"unsupported output format \(no extension\)")),
    "unwritable output folder": Row(output="unwritable",
                                    **_error(InvalidOutputError, r"output folder is not writable")),
    "existing output": Row(output="existing", cli=(2, r"output file already exists: .*\(pass --overwrite"),
                           lib=(InvalidOutputError, r"output file already exists"), kwargs={"overwrite": False}),
    # --- arguments
    "steps 0": Row(args=["--steps", "0"], kwargs={"num_inference_steps": 0},
                   cli=(2, r"--steps must be an integer >= 1, got 0"),
                   lib=(LatentSyncInputError, r"num_inference_steps must be an integer >= 1, got 0")),
    "guidance below 1": Row(args=["--guidance-scale", "0.5"], kwargs={"guidance_scale": 0.5},
                            cli=(2, r"--guidance-scale must be a finite number >= 1 \(1 disables guidance\)"),
                            lib=(LatentSyncInputError, r"guidance_scale must be a finite number >= 1")),
    "negative face index": Row(args=["--face-index", "-1"], kwargs={"face_index": -1},
                               cli=(2, r"--face-index must be an integer >= 0, got -1"),
                               lib=(LatentSyncInputError, r"face_index must be an integer >= 0, got -1")),
    "frames per window beyond the model": Row(kwargs={"num_frames": 25}, on_cli=False,
                                              lib=(LatentSyncInputError, r"num_frames must be an integer between 1 "
                                                                         r"and 24 \(the longest window")),
    # --- model and device (command line; the library's own checks)
    "unknown model id (offline)": Row(model="nobody/no-such-model", lib_check="model",
                                      **_error(ModelNotFoundError, r"model nobody/no-such-model is not cached on "
                                                                   r"this machine and the Hub cannot be reached")),
    "missing model folder": Row(model="./no/such/folder", lib_check="model",
                                **_error(ModelNotFoundError, r"model folder not found: \./no/such/folder")),
    "default model offline": Row(model="", lib_check="model",
                                 **_error(ModelNotFoundError, r"model ByteDance/LatentSync-1\.6 is not cached .*run "
                                                              r"once "
                                                              r"online .*latentsync make-tiny DIR")),
    "unavailable device": Row(args=["--device", "cuda:99"], lib_check="device", imports_torch=True,
                              **_error(DeviceError, r"device 'cuda:99' is not available on this machine; "
                                                    r"available: cpu")),
    "unknown device": Row(args=["--device", "gpu"], lib_check="device", imports_torch=True,
                          **_error(DeviceError, r"unknown device 'gpu': use one of cpu")),
    # --- valid, odd inputs (they run)
    "PNG as video": Row(video="still.png", needs_model=True),
    "JPEG as video": Row(video="still.jpg", needs_model=True),
    "1-frame video": Row(video="one_frame.mp4", needs_model=True),
    "0.1 s of audio": Row(audio="tenth.wav", needs_model=True),
    "truncated WAV": Row(audio="truncated.wav", needs_model=True),
    "truncated video, index first": Row(video="cut_download.mp4", needs_model=True,
                                        cli=(0, r"ends before its header says \(2\.0 s\)"),
                                        lib=(None, r"ends before its header says \(2\.0 s\)")),
    "rotated video": Row(video="rotated.mp4", needs_model=True, cli=(0, r"carries display metadata"),
                         lib=(None, r"carries display metadata \(270 degrees\): it is read as players show it "
                                    r"\(480x384\)")),
    "mirrored video": Row(video="mirrored.mp4", needs_model=True, cli=(0, r"carries display metadata \(mirrored\)"),
                          lib=(None, r"carries display metadata \(mirrored\): it is read as players show it")),
    "variable frame rate": Row(video="vfr.mp4", needs_model=True, cli=(0, r"has a variable frame rate"),
                               lib=(None, r"has a variable frame rate \(frames 40-80 ms apart\)")),
    "non-ASCII path with spaces": Row(video="vidéo à synchroniser 音声/visage parlant.mp4",
                                      audio="vidéo à synchroniser 音声/voix off.wav",
                                      output="out/vidéo synchronisée 音声.mp4", needs_model=True),
    "output in a missing folder": Row(output="out/new/deeper/result.mp4", needs_model=True,
                                      lib=(InvalidOutputError, r"output folder does not exist: .*deeper")),
    "existing output, overwrite": Row(output="existing", args=["--overwrite"], needs_model=True),
    "no face": Row(video="noface.mp4", needs_model=True,
                   **_error(NoFaceError, r"no face found in any frame of .*noface\.mp4$")),
    "32x32 video": Row(video="tiny32.mp4", needs_model=True,
                       **_error(NoFaceError, r"no face found in any frame of .*tiny32\.mp4 \(the frames are only "
                                             r"32x32 pixels\)")),
    "face index beyond the faces": Row(args=["--face-index", "5"], kwargs={"face_index": 5}, needs_model=True,
                                       cli=(2, r"--face-index=5, but 1 face track\(s\) were found in .*face\.mp4 "
                                               r"\(valid: 0\)"),
                                       lib=(LatentSyncInputError, r"face_index=5, but 1 face track\(s\) were found in "
                                                                  r".*face\.mp4 \(valid: 0\)")),
    "4K video": Row(video="uhd.mp4", needs_model=True, slow=True),
    "10 min of audio over a 2 s video": Row(video="two_seconds.mp4", audio="ten_minutes.wav", needs_model=True,
                                            slow=True, cli=(0, r"the audio \(600.0 s\) is 300 times as long as the "
                                                               r"video \(2.0 s\): .*play 300 times"),
                                            lib=(None, r"the audio \(600.0 s\) is 300 times as long")),
}


def _params(interface: str):
    for name, row in ROWS.items():
        if interface == "cli" and not row.on_cli:
            continue
        marks = [pytest.mark.slow] if row.slow else []
        yield pytest.param(name, id=name, marks=marks)


@dataclass
class Case:
    """A row made concrete in a test's folder."""

    video: str
    audio: str
    output: str
    out_dir: Path
    tmp_dir: Path
    before_out: list[str]


def _prepare(row: Row, media: Path, tmp_path: Path) -> Case:
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    if row.video == "uhd.mp4" and not (media / "uhd.mp4").exists():  # only the slow row needs it
        ffmpeg("-i", os.fspath(EXAMPLES / "face.mp4"), "-t", "0.4", "-vf", "scale=2160:2160,pad=3840:2160:840:0",
               "-c:v", "libx264", "-preset", "ultrafast", os.fspath(media / "uhd.mp4"))
    video, audio = os.fspath(media / row.video), os.fspath(media / row.audio)
    output = os.fspath(tmp_path / row.output)
    if row.output == "=video":
        output = video
    elif row.output == "=audio":
        output = audio
    elif row.output == "hardlink":
        output = os.fspath(out_dir / "linked.mp4")
        os.link(video, output)
    elif row.output == "symlink":
        output = os.fspath(out_dir / "linked.mp4")
        os.symlink(video, output)
    elif row.output == "folder":
        output = os.fspath(out_dir)
    elif row.output.endswith("/"):
        output = os.fspath(out_dir / row.output) + "/"
    elif row.output == "existing":
        output = os.fspath(out_dir / "result.mp4")
        Path(output).write_bytes(b"an earlier result")
    elif row.output == "unwritable":
        if os.geteuid() == 0:  # root writes through permissions: use a file system that refuses new files
            if not os.path.isdir("/sys"):
                pytest.skip("running as root without /sys: no unwritable folder to test with")
            output = "/sys/latentsync-result.mp4"
        else:
            locked = out_dir / "locked"
            locked.mkdir(mode=0o555)
            output = os.fspath(locked / "result.mp4")
    return Case(video, audio, output, out_dir, tmp_dir, sorted(p.name for p in out_dir.iterdir()))


def _check_leftovers(case: Case, row: Row, succeeded: bool) -> None:
    after = sorted(p.name for p in case.out_dir.iterdir())
    expected = set(case.before_out)
    if succeeded and Path(case.output).is_relative_to(case.out_dir):  # the output, or the folder made for it
        expected.add(Path(case.output).relative_to(case.out_dir).parts[0])
    assert after == sorted(expected), f"left in the output folder: {after}, expected {sorted(expected)}"
    assert leftovers(case.tmp_dir) == [], f"left in the temporary folder: {leftovers(case.tmp_dir)}"
    if succeeded:
        assert Path(case.output).stat().st_size > 1000
    elif row.output == "existing":
        assert Path(case.output).read_bytes() == b"an earlier result", "the existing output was changed"


def _cli_args(row: Row, case: Case, model: Path) -> list[str]:
    args = ["--video", case.video, "--audio", case.audio, "--output", case.output, "--steps", str(STEPS)]
    if row.model != "":
        args += ["--model", row.model or os.fspath(model)]
    return args + list(row.args)


def _offline(tmp_path: Path) -> dict[str, str]:
    """Offline, with an empty Hub cache: no test depends on the network or on what this machine has downloaded."""
    (tmp_path / "hf-cache").mkdir(exist_ok=True)
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": os.fspath(tmp_path / "hf-cache")}


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ERROR ")]


@pytest.mark.parametrize("name", list(_params("cli")))
def test_command_line(name, media, tiny_model_dir_64, tmp_path, caplog, monkeypatch):
    row = ROWS[name]
    case = _prepare(row, media, tmp_path)
    before = checksums(media)
    code, message = row.cli
    args = _cli_args(row, case, tiny_model_dir_64)
    if row.needs_model:  # in this interpreter (torch is loaded already), on the 64 px model
        from latentsync.commands import main

        monkeypatch.setattr(tempfile, "tempdir", os.fspath(case.tmp_dir))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with caplog.at_level(logging.INFO):
            assert main(args) == code, caplog.text
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    else:  # a fresh interpreter: the answer must come before torch is imported
        env = {**os.environ, "TMPDIR": os.fspath(case.tmp_dir), **_offline(tmp_path)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", RUN_CLI, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        elapsed = time.perf_counter() - start
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.strip() == ("torch imported" if row.imports_torch else "torch not imported")
        errors = [line.split(": ", 1)[1] for line in _error_lines(proc.stderr)]
        warnings = []
        print(f"{name}: exit {proc.returncode} after {elapsed:.2f} s")
    if code:
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert re.search(message, errors[0]), (message, errors[0])
    else:
        assert not errors, errors
        if message:
            assert any(re.search(message, w) for w in warnings), (message, warnings)
    _check_leftovers(case, row, succeeded=code == 0)
    assert checksums(media) == before, "an input file changed"


@pytest.mark.parametrize("name", list(_params("lib")))
def test_library(name, media, tiny_pipe_64, tmp_path, caplog, monkeypatch):
    import torch

    from latentsync.devices import check_device
    from latentsync.model_source import check_model_source

    row = ROWS[name]
    case = _prepare(row, media, tmp_path)
    before = checksums(media)
    exc_type, message = row.lib
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(case.tmp_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    device = row.args[row.args.index("--device") + 1] if "--device" in row.args else None

    def call():
        if row.lib_check == "model":
            from latentsync.commands.run import DEFAULT_MODEL

            (tmp_path / "hf-cache").mkdir()
            return check_model_source(row.model or DEFAULT_MODEL, cache_dir=tmp_path / "hf-cache")
        if row.lib_check == "device":
            return check_device(device)
        kwargs = {"num_inference_steps": STEPS, **row.kwargs}
        return tiny_pipe_64(case.video, case.audio, output_path=case.output, generator=torch.Generator().manual_seed(0),
                          **kwargs)

    with caplog.at_level(logging.WARNING):
        if exc_type is None:
            out = call()
            assert out.path == case.output and out.num_frames > 0
            if message:
                assert any(re.search(message, r.getMessage()) for r in caplog.records), (message, caplog.text)
        else:
            with pytest.raises(exc_type) as info:
                call()
            text = str(info.value)
            assert "\n" not in text and re.search(message, text), (message, text)
    if row.lib_check == "pipe":
        _check_leftovers(case, row, succeeded=exc_type is None)
    assert checksums(media) == before, "an input file changed"


@pytest.mark.parametrize("output_fps", [25, "input"])
@pytest.mark.parametrize("video", ["rotated.mp4", "mirrored.mp4", "rotated_mirrored.mp4"])
def test_rotated_video_comes_out_upright(media, tiny_pipe_64, tmp_path, video, output_fps):
    """Both readers (25 fps through ffmpeg, the input's own timeline through PyAV) turn a phone video upright and
    mirror it as its display matrix asks, so its face is found and the output looks as the input is shown: upright,
    mirrored once, with no display matrix of its own."""
    import torch

    from latentsync.media import probe_video

    out = tiny_pipe_64(media / video, media / "speech.wav", output_path=tmp_path / "upright.mp4",
                     num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_fps=output_fps)
    frames, upright = decode(Path(out.path), fps=None), decode(media / "face.mp4")[: out.num_frames]
    assert frames.shape[1:3] == (384, 480) == upright.shape[1:3]
    assert out.frames_without_face == 0
    info = probe_video(out.path)
    assert (info.rotation, info.mirrored) == (0, False)
    # the generated mouth is a small region: the rest of the picture is the upright input
    assert np.abs(frames.astype(int) - upright.astype(int)).mean() < 6


def test_library_default_overwrites_an_earlier_output_but_never_an_input(media, tiny_pipe_64, tmp_path):
    import torch

    earlier = tmp_path / "result.mp4"
    earlier.write_bytes(b"an earlier result")
    out = tiny_pipe_64(media / "face.mp4", media / "speech.wav", output_path=earlier, num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(0))
    assert Path(out.path).stat().st_size > 1000
    video = tmp_path / "face.mp4"
    shutil.copy(media / "face.mp4", video)
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    with pytest.raises(InvalidOutputError, match="is the input file"):
        tiny_pipe_64(video, media / "speech.wav", output_path=video, overwrite=True, num_inference_steps=STEPS)
    assert hashlib.sha256(video.read_bytes()).hexdigest() == digest



@pytest.mark.parametrize("output_fps", [25, "input"])
def test_file_names_that_look_like_urls(tiny_pipe_64, example_face, example_speech, tmp_path, monkeypatch,
                                        output_fps):
    """Files named like ``10:30.mp4`` or ``take2:voice.wav`` (letters or digits, then a colon), given as relative
    paths, are files: ffmpeg and PyAV read such a name as a protocol, and the run failed with "Protocol not found"
    (the video before any work; a voice per face's mix, the sound of a run stopped early at the end)."""
    monkeypatch.chdir(tmp_path)
    ffmpeg("-i", os.fspath(example_face), "-t", "0.6", "-c:v", "libx264", "./10:30.mp4")
    ffmpeg("-i", os.fspath(example_speech), "-t", "0.6", "-ac", "2", "-ar", "44100", "./take2:voice.wav")
    out = tiny_pipe_64("10:30.mp4", "take2:voice.wav", output_path="v2:out.mp4", num_inference_steps=1,
                       output_fps=output_fps)
    assert out.num_frames >= 14 and os.path.getsize("v2:out.mp4") > 0
    if output_fps == 25:
        tiny_pipe_64("10:30.mp4", {0: "take2:voice.wav"}, output_path="v2:dub.mp4", num_inference_steps=1)
        assert os.path.getsize("v2:dub.mp4") > 0


def test_odd_input_warnings_before_the_model(media):
    from latentsync.inputs import check_run_inputs

    checked = check_run_inputs(media / "two_seconds.mp4", media / "ten_minutes.wav")
    assert abs(checked.audio.duration - 600) < 0.01 and abs(checked.video.duration - 2) < 0.05
    assert any("300 times as long" in w and "play 300 times" in w for w in checked.warnings), checked.warnings
    assert check_run_inputs(media / "face.mp4", media / "speech.wav").warnings == []
    for still in ("still.png", "still.jpg", "one_frame.mp4"):
        assert check_run_inputs(media / still, media / "ten_minutes.wav").warnings == [], still
    cut = check_run_inputs(media / "cut_download.mp4", media / "speech.wav")
    assert cut.warnings == [f"video {media / 'cut_download.mp4'} ends before its header says (2.0 s): it looks "
                            "incomplete; the frames it holds are used"]
    # a variable frame rate is resampled at a fixed output rate, and kept with output_fps="input"
    [vfr] = check_run_inputs(media / "vfr.mp4", media / "speech.wav", output_fps=30).warnings
    assert "has a variable frame rate (frames 40-80 ms apart): it is resampled to 30 fps by time" in vfr
    assert check_run_inputs(media / "vfr.mp4", media / "speech.wav", output_fps="input").warnings == []


def test_command_line_warns_of_resampling_only_when_it_resamples(media, tiny_model_dir_64, tmp_path, caplog,
                                                                  monkeypatch):
    """The command line's checks before the model know its --fps: a variable frame rate kept with --fps input is not
    called resampled, and at --fps 30 the warning names 30 fps."""
    from latentsync.commands import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for fps, said in (("input", None), ("30", "resampled to 30 fps by time")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main(["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(media / "vfr.mp4"), "--audio",
                         os.fspath(media / "speech.wav"), "--output", os.fspath(tmp_path / f"out{fps}.mp4"),
                         "--steps", "1", "--fps", fps]) == 0
        vfr = [r.getMessage() for r in caplog.records if "variable frame rate" in r.getMessage()]
        assert (vfr == []) if said is None else (len(vfr) == 1 and said in vfr[0]), vfr


def test_raw_stream_kept_on_its_own_timeline_is_refused_before_the_model(media, tiny_model_dir_64, tmp_path, caplog,
                                                                           monkeypatch):
    """A raw .h264 stream has no timestamps: ``--fps input`` failed only after the model had loaded, in the library's
    words ("use output_fps=25"). The checks before the model refuse it now, in the options' words; at a fixed rate
    it is read as before. An AVI whose packets lack presentation times (B-frames) has a duration: it keeps its
    timeline (the decoder times its frames), and is not called a variable frame rate any more."""
    from latentsync.commands import main
    from latentsync.inputs import check_run_inputs
    from latentsync.media import probe_video

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("latentsync.commands.run.load_pipeline", no_model)
    raw, avi = tmp_path / "clip.h264", tmp_path / "bframes.avi"
    ffmpeg("-i", os.fspath(media / "face.mp4"), "-an", "-c:v", "libx264", "-f", "h264", os.fspath(raw))
    ffmpeg("-i", os.fspath(media / "face.mp4"), "-an", "-c:v", "mpeg4", "-bf", "2", os.fspath(avi))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(raw), "--audio",
                     os.fspath(media / "speech.wav"), "--output", os.fspath(tmp_path / "out.mp4"), "--fps",
                     "input"]) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"--fps input keeps the video's own timestamps, but {raw} has none (a raw stream such as .h264): give a "
        "frame rate, e.g. --fps 25"]
    with pytest.raises(InvalidVideoError, match=r"^output_fps input keeps .* e\.g\. output_fps 25$"):
        check_run_inputs(raw, media / "speech.wav", output_fps="input")
    assert check_run_inputs(raw, media / "speech.wav").video.no_timestamps
    info = check_run_inputs(avi, media / "speech.wav", output_fps="input").video
    assert not info.no_timestamps and not info.variable_frame_rate and probe_video(media / "face.mp4").frame_intervals
    assert not (tmp_path / "out.mp4").exists()


def test_odd_sized_video_keeps_its_pixels_in_an_even_output(media, tmp_path, caplog):
    """H.264 (4:2:0) needs even sides: a 321x241 video is said so before the model, and written 322x242 with its
    last column and row repeated (not resized: every input pixel stays where it was)."""
    from latentsync.inputs import check_run_inputs
    from latentsync.media import VideoWriter

    odd = tmp_path / "odd.mp4"
    ffmpeg("-i", os.fspath(media / "face.mp4"), "-t", "0.2", "-vf", "scale=321:241", "-c:v", "libx264",
           "-pix_fmt", "yuv444p", "-crf", "0", os.fspath(odd))
    assert check_run_inputs(odd, media / "speech.wav").warnings == [
        f"video {odd} is 321x241: H.264 video needs even sides, so the output is 322x242 (its last column and row "
        "repeated)"]
    frames = decode(odd, fps=None)
    assert frames.shape[1:3] == (241, 321)
    caplog.clear()
    with caplog.at_level("WARNING"), VideoWriter(tmp_path / "even.mp4", crf=0) as writer:
        for frame in frames:
            writer.write(frame)
    written = decode(tmp_path / "even.mp4", fps=None).astype(int)
    assert written.shape[1:3] == (242, 322) and not caplog.records  # no resize (imageio warns when it resizes)
    assert np.abs(written[:, :241, :321] - frames).mean() < 1.5  # in place (a resize would shift most pixels)



def test_faces_in_very_wide_or_tall_frames_are_found(media):
    """A 200 px face in a 3000 x 200 banner (or the same turned upright) was "no face found in any frame": the
    detector shrinks the whole frame to its small square input. Such frames are searched in overlapping tiles now,
    each face found once wherever it lies across the tiles; frames up to 2:1 are searched whole, as before."""
    import cv2

    from latentsync.face.detection import FaceDetector, detection_tiles

    assert detection_tiles(1920, 1080) == [(0, 0, 1920, 1080)] and detection_tiles(1080, 1920) == [(0, 0, 1080, 1920)]
    face = cv2.resize(decode(media / "face.mp4")[0][:, 48:432], (200, 200), interpolation=cv2.INTER_AREA)
    with FaceDetector() as detector:
        for left in (1400, 1300, 1250):  # inside one tile; across tile edges
            wide, tall = np.zeros((200, 3000, 3), np.uint8), np.zeros((3000, 200, 3), np.uint8)
            wide[:, left:left + 200] = tall[left:left + 200] = face
            for frame, along in ((wide, 0), (tall, 1)):
                boxes = detector.detect(frame)
                assert len(boxes) == 1, (left, along, boxes)
                assert left < boxes[0].center[along] < left + 200
                assert detector.landmarks(frame, boxes[0]) is not None  # the face mesh finds it too


def test_relative_names_with_a_colon_are_files(media, tiny_pipe_64, tmp_path, monkeypatch):
    """ffmpeg and PyAV read ``take:1.mp4`` as a URL of the protocol ``take``: the run failed with "Protocol not
    found" (before the model with the command line's checks, and after it in the library's writer and the
    input-timeline reader). Such names are read as the files they are now."""
    import torch

    from latentsync.inputs import check_run_inputs
    from latentsync.media.files import ffmpeg_path

    assert ffmpeg_path("take:1.mp4") == os.path.join(".", "take:1.mp4")
    assert ffmpeg_path("/abs/take:1.mp4") == "/abs/take:1.mp4" and ffmpeg_path("dir/take:1.mp4") == "dir/take:1.mp4"
    shutil.copy(media / "face.mp4", tmp_path / "take:1.mp4")
    shutil.copy(media / "speech.wav", tmp_path / "voice:1.wav")
    monkeypatch.chdir(tmp_path)
    assert check_run_inputs("take:1.mp4", "voice:1.wav").warnings == []
    for output_fps in (25, "input"):
        out = tiny_pipe_64("take:1.mp4", "voice:1.wav", output_path=f"out:{output_fps}.mp4", num_inference_steps=STEPS,
                           generator=torch.Generator().manual_seed(0), output_fps=output_fps)
        assert out.num_frames == 8 and (tmp_path / f"out:{output_fps}.mp4").stat().st_size > 1000


def test_colon_names_in_the_live_output_the_evaluation_and_the_test_clips(tiny_syncnet_dir, tmp_path, monkeypatch):
    """Every other place a user's path reaches ffmpeg reads ``take:1.mp4`` as the file: the live output (``latentsync
    run --audio - --output 10:30.mp4`` failed with "ffmpeg could not write the live output"), the clips that
    latentsync.testing cuts and joins, the training's validation clip (trimmed from the configured files); the
    evaluation's sync confidence (a video and a separate sound) read them already, through the media readers."""
    from latentsync.eval.sync_confidence import estimate_sync
    from latentsync.media import pipes, probe_video
    from latentsync.media.video import trim_media
    from latentsync.models import StableSyncNet
    from latentsync.testing import concat_clips, side_by_side_clip

    monkeypatch.chdir(tmp_path)
    sink = pipes.LiveVideoSink("10:30.mp4", 25)
    sink.write_audio(np.zeros(16000 // 5, np.float32))
    for _ in range(5):
        sink.write(np.zeros((32, 32, 3), np.uint8))
    sink.close()
    assert probe_video("10:30.mp4").width == 32
    shutil.copy(EXAMPLES / "face.mp4", "take:1.mp4")
    shutil.copy(EXAMPLES / "speech.wav", "voice:1.wav")
    side_by_side_clip("two:1.mp4", "take:1.mp4", "take:1.mp4", "voice:1.wav", seconds=0.4)
    concat_clips("both:1.mp4", ["two:1.mp4", "two:1.mp4"])
    assert abs(probe_video("both:1.mp4").duration - 0.8) < 0.1
    assert probe_video(trim_media("take:1.mp4", "cut:1.mp4", 0.2, video=True)).duration < 0.3  # a validation clip
    est = estimate_sync("take:1.mp4", StableSyncNet.from_pretrained(tiny_syncnet_dir), audio="voice:1.wav", vshift=2,
                        max_frames=20, faces_aligned=True)
    assert est.num_windows > 0


def test_a_run_probes_its_video_once(media, tiny_pipe_64, tiny_model_dir_64, tmp_path, monkeypatch):
    """The video was probed by the input checks and again when the run opened it (and the command line's checks
    before the model made a third probe): one ffmpeg probe now, shared per file version, so a file changed between
    the checks and the reading is probed again."""
    import subprocess as subprocess_module

    from latentsync.commands import main
    from latentsync.media import open_frames, probe_video

    probes = []
    run = subprocess_module.run

    def counted(cmd, *args, **kwargs):
        if "framecrc" in cmd:
            probes.append(cmd[cmd.index("-i") + 1])
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess_module, "run", counted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    video = shutil.copy(media / "face.mp4", tmp_path / "lib.mp4")  # a file no earlier test probed
    tiny_pipe_64(video, media / "speech.wav", output_path=tmp_path / "out.mp4", num_inference_steps=1,
                 output_fps="input")
    assert probes == [os.fspath(video)]
    probes.clear()
    video = shutil.copy(media / "face.mp4", tmp_path / "cli.mp4")  # at 25 fps, the other reader
    assert main(["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(video), "--audio",
                 os.fspath(media / "speech.wav"), "--output", os.fspath(tmp_path / "cli_out.mp4"), "--steps", "1"]) == 0
    assert probes == [os.fspath(video)]
    # the same file rewritten in place (same name, same inode) after its probe: probed again, read as it is now
    ffmpeg("-i", os.fspath(media / "face.mp4"), "-frames:v", "5", "-c:v", "libx264", os.fspath(video))
    assert open_frames(video).expected_frames == 5 and abs(probe_video(video).duration - 0.2) < 0.01
    assert len(probes) == 2


def test_a_file_with_two_video_streams_is_read_from_its_first_by_every_reader(tmp_path):
    """A dashcam's two cameras (or a proxy beside the picture) in one file: the 25 fps reader took ffmpeg's own pick,
    the largest stream, while the probe and the input-timeline reader (PyAV) read the first; so the picture changed
    with --fps. Every reader reads the first now, and an audio file with only a cover picture has no video."""
    from latentsync.media import iter_frames, probe_video
    from latentsync.media.timeline import iter_stored_frames

    two = tmp_path / "two cameras.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=0.2", "-f", "lavfi",
           "-i", "testsrc=size=96x80:rate=25:duration=0.2", "-map", "0:v", "-map", "1:v", "-c:v", "libx264",
           os.fspath(two))
    info = probe_video(two)
    assert (info.width, info.height) == (64, 48)
    assert next(iter(iter_frames(two))).shape == next(iter(iter_stored_frames(two))).shape == (48, 64, 3)
    cover = tmp_path / "cover.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-f", "lavfi", "-i", "color=size=32x32:duration=0.04",
           "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame", "-c:v", "mjpeg", "-disposition:v", "attached_pic",
           "-frames:v", "1", os.fspath(cover))
    with pytest.raises(InvalidVideoError, match=r"^no video stream in .*cover\.mp3$"):
        next(iter(iter_frames(cover)))

def test_device_dtype_check(monkeypatch):
    import torch

    from latentsync import devices

    assert devices.check_device("cpu", "fp32") == ("cpu", torch.float32)
    assert devices.check_device(None, None)[0] in devices.available_devices()

    def unsupported(device, dtype):
        raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'\nmore details')

    monkeypatch.setattr(devices, "_smoke_test", unsupported)
    with pytest.raises(DeviceError, match=r"cpu cannot compute in fp16 \(\"slow_conv2d_cpu\" not implemented for "
                                          r"'Half'\): use fp32$"):
        devices.check_device("cpu", "fp16")


def test_hub_unreachable_is_found_quickly(monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable Hub is found by a failed connection, not by half a minute of retries."""
    from huggingface_hub import constants

    from latentsync.model_source import check_model_source, hub_is_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    assert not hub_is_reachable()
    with pytest.raises(ModelNotFoundError, match="not cached on this machine and the Hub cannot be reached"):
        check_model_source("nobody/no-such-model")
    assert time.perf_counter() - start < 5


def test_unknown_model_on_a_reachable_hub(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from latentsync import model_source

    asked = []

    def not_found(self, repo_id, **kwargs):
        asked.append(repo_id)
        raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # what the Hub answers for an unknown id

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model_source, "hub_is_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", not_found)
    with pytest.raises(ModelNotFoundError, match="unknown model nobody/no-such-model: no such folder here, and no "
                                                 "such model on the Hub"):
        model_source.check_model_source("nobody/no-such-model", cache_dir=tmp_path)
    assert asked == ["nobody/no-such-model"]


def test_model_folder_without_a_pipeline(tmp_path):
    from latentsync.model_source import check_model_source

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="holds no pipeline .*latentsync make-tiny"):
        check_model_source(tmp_path)
    with pytest.raises(ModelNotFoundError, match="is a file"):
        check_model_source(tmp_path / "notes.txt")


def test_help_and_import_do_not_load_torch():
    code = ("import sys, latentsync, latentsync.commands.run\n"
            "assert 'torch' not in sys.modules, 'import latentsync loaded torch'\n"
            "from latentsync.commands import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
            "assert 'torch' not in sys.modules, '--help loaded torch'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--overwrite" in proc.stdout and "--verbose" in proc.stdout and "143" in proc.stdout


HEAVY_MODULES = ("torch", "diffusers", "transformers", "datasets", "mediapipe", "scipy")
# each case in turn in one fresh interpreter: its exit status, its error lines and the heavy modules loaded by then
RUN_CASES = """
import importlib, json, logging, sys
module, _, name = (sys.argv[4] if len(sys.argv) > 4 else "latentsync.commands:main").partition(":")
main = getattr(importlib.import_module(module), name)

errors = []
handler = logging.Handler(logging.ERROR)
handler.emit = lambda record: errors.append(record.getMessage())
logging.getLogger("latentsync").addHandler(handler)
results = []
for args in json.loads(sys.argv[2]):
    errors.clear()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    results.append([code, list(errors), [m for m in sys.argv[3].split(",") if m in sys.modules]])
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""


def test_subcommands_answer_help_and_bad_input_without_the_heavy_libraries(tmp_path):
    """``faces``, ``prepare``, ``eval``, ``convert`` and ``batch`` answer ``--help``, usage errors and bad input
    (a missing video, folder or job list, bad option values, an output in the way) before torch, diffusers,
    transformers, datasets, MediaPipe or SciPy is imported (they took 5 s to import before every answer)."""
    missing = os.fspath(tmp_path / "missing.mp4")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n")
    (tmp_path / "raw").mkdir()
    raw, out = os.fspath(tmp_path / "raw"), os.fspath(tmp_path / "out")
    cases = [  # (arguments, exit status, what the one error line says; None: no error line)
        (["faces", "--help"], 0, None),
        (["faces", missing], 2, "video file not found"),
        (["faces", missing, "--syncnet", raw], 2, None),  # usage error: --syncnet without --speaking
        (["faces", missing, "--audio-track", "2"], 2, None),  # usage error: --audio-track without --speaking
        (["prepare", "--help"], 0, None),
        (["prepare", raw, out, "--min-seconds", "0"], 2, "need 0 < min_seconds"),
        (["prepare", os.fspath(tmp_path / "no_such_folder"), out], 2, "input folder not found"),
        (["prepare", raw, os.fspath(tmp_path / "raw" / "out")], 2, "is inside the input folder"),
        (["prepare", raw, out, "--workers", "0"], 2, "--workers must be at least 1, got 0"),
        (["prepare", raw, out, "--address", "auto"], 2, None),  # usage error: a Ray option without --engine ray
        (["eval", "--help"], 0, None),
        (["eval", "syncnet-acc", "--help"], 0, None),
        (["eval", "sync-conf", "--help"], 0, None),
        (["eval", "videos", "--help"], 0, None),
        (["eval", "sync-conf", missing], 2, "not found: .*missing.mp4"),
        (["eval", "syncnet-acc", "--model", raw, "--data", missing], 2, "data not found: --data="),
        (["eval", "videos", "--generated", missing, "--output", out], 2, "--generated .* not found"),
        (["eval", "videos", "--generated", raw, "--output", out, "--metrics", "lpips"], 2, "unknown metric"),
        (["eval", "videos", "--generated", raw, "--output", os.fspath(a_file)], 2, "is a file"),
        (["convert", "--help"], 0, None),
        (["convert", "--official", "ByteDance/LatentSync-1.6", "--output", os.fspath(a_file)], 2, "already exists"),
        (["convert", "--official", "ByteDance/LatentSync-1.6", "--output", out, "--dtype", "fp64"], 2, None),
        (["batch", "--help"], 0, None),
        (["batch", os.fspath(tmp_path / "jobs.csv"), out], 2, "job list not found"),
        (["batch", raw, out], 2, "no video files"),
    ]
    _run_light_cases(cases, tmp_path, HEAVY_MODULES, "latentsync", env={**os.environ, **_offline(tmp_path)})
    assert not os.path.exists(out), "a refused command created its output folder"


def _run_light_cases(cases: list, tmp_path, heavy_modules, command: str, entry: str | None = None,
                     env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cases`` (arguments, exit status, a pattern for the one error line or None for no error line) in one
    fresh interpreter (RUN_CASES; ``entry``: the command's function, default latentsync's main) and check each
    status, error line and that none of ``heavy_modules`` was imported."""
    results = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-c", RUN_CASES, os.fspath(results), json.dumps([c[0] for c in cases]),
                           ",".join(heavy_modules), *([entry] if entry else [])],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (args, status, message), (code, errors, heavy) in zip(cases, json.loads(results.read_text())):
        assert not heavy, f"`{command} {' '.join(args)}` imported {', '.join(heavy)}"
        assert code == status, (args, code, errors)
        if message is None:
            assert not errors, (args, errors)
        else:
            assert len(errors) == 1 and re.search(message, errors[0]), (args, errors)
    return proc


@pytest.mark.parametrize("command", ["train_unet_command", "train_syncnet_command"])
def test_training_scripts_answer_help_and_bad_arguments_without_the_heavy_libraries(tmp_path, command):
    """``train/train_unet.py`` and ``train/train_syncnet.py`` answer ``--help``, usage errors and settings that
    cannot be read (no settings, a missing or broken config file, an unknown key) before torch, accelerate or the
    trainers are imported (they imported them before every answer: seconds)."""
    (tmp_path / "broken.yaml").write_text("learning_rate: [1e-4\n")
    (tmp_path / "fine.yaml").write_text("max_train_steps: 3\n")
    cases = [  # (arguments, exit status, what the one error line says; None: no error line)
        (["--help"], 0, None),
        (["--bogus"], 2, None),  # usage error
        ([], 2, "no settings given"),
        (["--config", os.fspath(tmp_path / "missing.yaml")], 2, "config file not found: .*missing.yaml"),
        (["--config", os.fspath(tmp_path / "broken.yaml")], 2, "cannot read config .*broken.yaml"),
        (["--config", os.fspath(tmp_path / "fine.yaml"), "no_such_setting=1"], 2, "unknown config keys: no_such"),
        (["--config", os.fspath(tmp_path / "fine.yaml"), "learning_rate"], 2, "override must look like key=value"),
    ]
    proc = _run_light_cases(cases, tmp_path, (*HEAVY_MODULES, "accelerate"), command,
                            entry=f"latentsync.commands.train:{command}")
    assert "resume_from_checkpoint" in proc.stdout  # the usage


SIGNAL_ON_TORCH = """
import importlib.abc, os, signal, sys

class SignalOnTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":  # the first import of torch: a signal then, as from a scheduler while the run starts
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))

sys.meta_path.insert(0, SignalOnTorch())
from latentsync.commands import train
sys.exit(getattr(train, sys.argv[2])(sys.argv[3:]))
"""


@pytest.mark.parametrize("signame,command", [("SIGTERM", "train_unet_command"), ("SIGINT", "train_syncnet_command")])
def test_training_scripts_stopped_while_torch_is_imported_say_so(tmp_path, signame, command):
    """A signal while the training script imports torch (its first seconds) ends it with one line and 143 (130),
    not silently (SIGTERM killed it before its handler was installed)."""
    config = "unet_tiny_stage1.yaml" if command == "train_unet_command" else "syncnet_tiny.yaml"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_ON_TORCH, signame, command, "--config",
                           os.fspath(ROOT / "train" / "configs" / config), f"train_data={tmp_path}",
                           f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                          check=False)
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    errors = [line.split(" ERROR ", 1)[1] for line in proc.stderr.splitlines() if " ERROR " in line]
    assert errors == [f"latentsync: stopped by {name} before the run started"], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- interrupts
def _start_cli(args: list[str], tmp_dir: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": os.fspath(tmp_dir), **_offline(cwd)}
    return subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, cwd=cwd)


def _stop(proc: subprocess.Popen, sig: int) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc.send_signal(sig)
    rest = proc.stderr.read().decode(errors="replace")
    code = proc.wait(timeout=120)
    return code, rest, time.perf_counter() - start


def _partials(folder: Path, wait: float = 0) -> list[str]:
    """The partial outputs in ``folder``, waiting up to ``wait`` seconds for one to appear."""
    deadline = time.monotonic() + wait
    while True:
        found = [p.name for p in folder.iterdir() if ".partial" in p.name]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _interrupt(media: Path, model: Path, tmp_path: Path, video: Path, started, sig: int) -> tuple[str, str]:
    """Run the command line on ``video`` and the 10 min audio, send ``sig`` once ``started(stderr)`` holds, and
    check that it stops at once with the shell's status and one line, leaving nothing behind; returns its stderr
    before and after the signal."""
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    before = checksums(media)
    proc = _start_cli(["--model", os.fspath(model), "--video", os.fspath(video), "--audio",
                       os.fspath(media / "ten_minutes.wav"), "--output", os.fspath(out_dir / "result.mp4"),
                       "--steps", "1"], tmp_dir, tmp_path)
    text = read_until(proc.stderr, started, timeout=240)
    assert started(text), text
    assert [p for p in tmp_dir.iterdir() if p.name.startswith("latentsync-run-")], "no work folder during the run"
    if "Lip sync" in text:
        assert _partials(out_dir, wait=30), "no partial output while windows are written"
    code, rest, seconds = _stop(proc, sig)
    name = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    print(f"{name}: exit {code} after {seconds:.1f} s")
    assert code == 128 + sig, rest
    assert _error_lines(rest) == [f"ERROR latentsync: stopped by {name}: no output was written, temporary files "
                                  "were removed"], rest
    assert "Traceback" not in text + rest
    assert list(out_dir.iterdir()) == [] and leftovers(tmp_dir) == []
    assert checksums(media) == before
    return text, rest


def test_ctrl_c_during_face_analysis(media, tiny_model_dir_64, tmp_path):
    long_video = tmp_path / "long_face.mp4"  # 240 frames: the face analysis lasts long enough to be interrupted
    ffmpeg("-stream_loop", "19", "-i", os.fspath(media / "face.mp4"), "-c", "copy", os.fspath(long_video))
    _interrupt(media, tiny_model_dir_64, tmp_path, long_video,
               lambda t: re.search(r"Face analysis: +[1-9]\d*%", t) is not None, signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_stop_during_generation_of_a_long_audio(sig, media, tiny_model_dir_64, tmp_path):
    """10 min of audio over a 2 s video: a warning before the model loads, then a signal while windows are written."""
    text, _ = _interrupt(media, tiny_model_dir_64, tmp_path, media / "two_seconds.mp4",
                         lambda t: re.search(r"Lip sync: +\d+%\|[^\n]*\| *[1-9]\d*/", t) is not None, sig)
    assert re.search(r"WARNING latentsync\.inputs: the audio \(600\.0 s\) is 300 times as long as the video "
                     r"\(2\.0 s\): .*play 300 times", text), text
    assert text.index("300 times as long") < text.index("loading"), "the warning must come before the model loads"


def test_the_next_run_removes_what_a_killed_run_left(media, tiny_model_dir_64, tmp_path, monkeypatch, caplog):
    from latentsync.commands import main

    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    output = out_dir / "result.mp4"
    args = ["--model", os.fspath(tiny_model_dir_64), "--video", os.fspath(media / "face.mp4"), "--audio",
            os.fspath(EXAMPLES / "speech.wav"), "--output", os.fspath(output), "--steps", "1"]  # 7 windows
    proc = _start_cli(args, tmp_dir, tmp_path)
    read_until(proc.stderr, lambda t: "Lip sync:" in t, timeout=240)
    assert _partials(out_dir, wait=60), "no partial output while windows are written"
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait(timeout=60)
    proc.stderr.close()
    stale_partials, stale_work = _partials(out_dir), leftovers(tmp_dir)
    assert stale_partials and stale_work, (stale_partials, stale_work)
    # the next run on the same output (here in this process) removes them and writes its own result
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    short = ["--audio", os.fspath(media / "speech.wav")]
    assert main(args[:4] + short + args[6:]) == 0, caplog.text
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.mp4"]
    assert leftovers(tmp_dir) == []


def test_stale_files_of_other_processes(tmp_path, monkeypatch):
    """A file of a live process is kept; one of a dead process, or one carrying this process's id that it did not
    make (a restarted container reuses process ids), is removed."""
    from latentsync import tempfiles

    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path))
    host = tempfiles._host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {f"latentsync-run-{host}-{dead.pid}-abc": True, f"latentsync-run-{host}-{os.getpid()}-old": True,
             f"latentsync-run-{host}-1-live": False, f"latentsync-run-otherhost-{dead.pid}-abc": False}
    for name in names:
        (tmp_path / name).mkdir()
    mine = tempfiles.make_work_dir("run")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([n for n, gone in names.items() if not gone] +
                                                                [Path(mine).name])
    tempfiles.remove_work_dir(mine)
    output = tmp_path / "result.mp4"
    stale = tmp_path / f".result.mp4.{host}-{dead.pid}.partial.mp4"
    live = tmp_path / f".result.mp4.{host}-1.partial.mp4"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert tempfiles.remove_stale_partials(output) == [os.fspath(stale)] and live.exists()


def test_atomic_writes_give_files_the_usual_mode(tmp_path):
    """A file written through write_atomically has the mode of any new file under the umask, also when its writer
    makes it owner-only (safetensors' save_file writes 0600: an avatar's tensors could not be read by another user
    while its JSON and video could)."""
    import torch
    from safetensors.torch import save_file

    from latentsync import tempfiles

    old = os.umask(0o022)
    try:
        tensors = tempfiles.write_atomically(tmp_path / "a.safetensors", lambda p: save_file({"x": torch.zeros(2)}, p))
        text = tempfiles.write_atomically(tmp_path / "b.json", lambda p: Path(p).write_text("{}"))
        assert oct(os.stat(tensors).st_mode & 0o777) == oct(os.stat(text).st_mode & 0o777) == oct(0o644)
        os.umask(0o077)  # a user who wants owner-only files gets them
        private = tempfiles.write_atomically(tmp_path / "c.safetensors", lambda p: save_file({"x": torch.ones(2)}, p))
        assert oct(os.stat(private).st_mode & 0o777) == oct(0o600)
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------- library interrupts
def test_library_interrupt_during_generation_leaves_nothing(media, tiny_pipe_64, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def ctrl_c(pipe, step, timestep, kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_pipe_64(media / "two_seconds.mp4", EXAMPLES / "speech.wav", output_path=tmp_path / "result.mp4",
                   num_inference_steps=STEPS, callback_on_step_end=ctrl_c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and leftovers(tmp_path / "tmp") == []


def test_library_interrupt_during_face_analysis_leaves_nothing(media, tiny_pipe_64, tmp_path, monkeypatch):
    from latentsync.face.detection import FaceDetector

    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    seen = []
    real = FaceDetector.detect

    def interrupted(self, frame):
        seen.append(1)
        if len(seen) == 10:
            raise KeyboardInterrupt
        return real(self, frame)

    monkeypatch.setattr(FaceDetector, "detect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_pipe_64(media / "two_seconds.mp4", EXAMPLES / "speech.wav", output_path=tmp_path / "result.mp4",
                   num_inference_steps=STEPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and leftovers(tmp_path / "tmp") == []


@pytest.mark.parametrize("output_fps", [25, "input"])
def test_the_output_names_its_colour_matrix_when_its_input_does(media, tiny_pipe_64, tmp_path, output_fps):
    """An input that names its YUV matrix (phones, cameras, OBS: BT.709) is read with it, and the output names the
    matrix it is written with (BT.601), so players show both with the same colours; left untagged, an HD output was
    shown with BT.709 and every colour shifted. An input that names none (here the example clip) was read with
    ffmpeg's BT.601 guess, and its output stays untagged, so that players guess both files alike."""
    import subprocess

    from conftest import FFMPEG
    from latentsync.media import probe_video

    untagged = media / "face.mp4"
    tagged = tmp_path / "tagged.mp4"
    ffmpeg("-i", os.fspath(untagged), "-c", "copy", "-bsf:v",
           "h264_metadata=matrix_coefficients=1:colour_primaries=1:transfer_characteristics=1", os.fspath(tagged))
    assert not probe_video(untagged).colors_known and probe_video(tagged).colors_known
    for video, tags in ((untagged, False), (tagged, True)):
        out = tmp_path / f"out_{video.stem}.mp4"
        tiny_pipe_64(video, media / "speech.wav", output_path=out, num_inference_steps=STEPS, output_fps=output_fps)
        header = subprocess.run([FFMPEG, "-hide_banner", "-i", os.fspath(out)], capture_output=True, text=True,
                                check=False).stderr
        assert ("yuv420p(tv, smpte170m" in header) == tags, header


def test_a_full_temporary_folder_is_one_line_and_leaves_nothing(media, tiny_pipe_64, tmp_path, monkeypatch):
    """A video the output loops over is cached on disk in the temporary folder; when that folder fills up (here: the
    cache's writes fail with ENOSPC) the run ends with one line naming the folder and TMPDIR, not OSError's
    traceback, and leaves no output and no temporary files."""
    import builtins
    import errno

    from latentsync import streaming

    monkeypatch.setattr(tempfile, "tempdir", os.fspath(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(streaming.VideoStream, "max_tail_frames", 0)  # the 12-frame clip loops: it is cached

    class FullDisk:
        def __init__(self, path, mode):
            self.file = builtins.open(path, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        return FullDisk(path, mode) if os.fspath(path).endswith("frames.u8") else builtins.open(path, mode, *args,
                                                                                                 **kwargs)

    monkeypatch.setattr(streaming, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(LatentSyncInputError, match=r"^cannot keep the video's frames in .*latentsync-run-.*: No space "
                                                   r"left on device \(.*set TMPDIR to a folder with more room\)$"):
        tiny_pipe_64(media / "face.mp4", EXAMPLES / "speech.wav", output_path=tmp_path / "result.mp4",
                     num_inference_steps=STEPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and leftovers(tmp_path / "tmp") == []


# ---------------------------------------------------------------------------------------------------- the app
def test_app_removes_its_results_on_sigterm(tiny_model_dir_64, tmp_path):
    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    env = {**os.environ, "TMPDIR": os.fspath(tmp_dir), "LATENTSYNC_MODEL": os.fspath(tiny_model_dir_64),
           "LATENTSYNC_DEVICE": "cpu", "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **_offline(tmp_path)}
    proc = subprocess.Popen([sys.executable, os.fspath(ROOT / "app.py")], stderr=subprocess.STDOUT,
                            stdout=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stderr = proc.stdout  # _stop reads .stderr
    text = read_until(proc.stdout, lambda t: f"127.0.0.1:{port}" in t, timeout=300)
    work = [p for p in tmp_dir.iterdir() if p.name.startswith("latentsync-app-")]
    assert len(work) == 1, (text, list(tmp_dir.iterdir()))
    (work[0] / "job").mkdir()
    (work[0] / "job" / "lipsync.mp4").write_bytes(b"a result")
    code, rest, seconds = _stop(proc, signal.SIGTERM)
    print(f"app stopped by SIGTERM: exit {code} after {seconds:.1f} s")
    assert code == 143, text + rest
    assert not work[0].exists(), "the app's results were left behind"


def test_resolution_the_model_cannot_run_is_refused_up_front(tiny_pipe_64, media, monkeypatch):
    from diffusers.configuration_utils import FrozenDict

    monkeypatch.setattr(tiny_pipe_64, "_internal_dict", FrozenDict({**tiny_pipe_64.config, "resolution": 100}))
    with pytest.raises(LatentSyncInputError, match="resolution 100 is not a multiple of 16"):
        tiny_pipe_64(media / "face.mp4", media / "speech.wav", num_inference_steps=STEPS)
