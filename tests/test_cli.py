"""The `latentsync` command line on the tiny model."""

from __future__ import annotations

import numpy as np

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


def test_keep_input_frame_rate(tmp_path, example_face, tiny_model_dir):
    from conftest import ffmpeg
    from latentsync.media.timeline import read_timestamps

    clip = tmp_path / "face50.mp4"
    ffmpeg("-i", str(example_face), "-t", "0.6", "-vf", "fps=50", str(clip))
    t = np.arange(8000) / 16000
    speech = write_wav(tmp_path / "s.wav", 0.3 * np.sin(2 * np.pi * 180 * t))
    out = tmp_path / "out.mp4"
    assert main(["--model", str(tiny_model_dir), "--video", str(clip), "--audio", str(speech), "--output", str(out),
                 "--fps", "input", "--steps", "1", "--device", "cpu"]) == 0
    times, _ = read_timestamps(out)
    assert len(times) == 25 and np.allclose(times, np.arange(25) / 50)  # 0.5 s of a 50 fps input
