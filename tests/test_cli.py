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
