"""The app's live tab (app_live.py): an avatar prepared from an upload, microphone chunks in (any rate, int16),
lip-synced MP4 chunks with their speech out, window by window."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from latentsync import tempfiles  # noqa: E402
from latentsync.media import iter_frames, load_audio, probe_video  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def app_live():
    spec = importlib.util.spec_from_file_location("app_live", ROOT / "app_live.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_microphone_samples(app_live):
    t = np.arange(48000) / 48000
    stereo = (np.stack([np.sin(2 * np.pi * 200 * t)] * 2, axis=1) * 16000).astype(np.int16)
    samples = app_live.microphone_samples((48000, stereo))
    assert samples.dtype == np.float32 and samples.shape == (16000,)
    assert abs(np.abs(samples).max() - 16000 / 32767) < 0.02


def test_live_tab_session(app_live, tiny_pipe_64, example_face, example_speech):
    tab = app_live.LiveTab(tiny_pipe_64, steps=1, max_seconds=10)
    try:
        with pytest.raises(gr.Error, match="Prepare an avatar first"):
            tab.push((16000, np.zeros(8000, np.int16)), None, None)
        with pytest.raises(gr.Error) as refused:  # in the page's words: the file's name, a capital first letter
            tab.prepare(os.fspath(Path(example_speech)))
        assert refused.value.message.startswith("No video stream in speech.wav"), refused.value.message
        avatar, status = tab.prepare(str(example_face))
        assert "Avatar ready" in status
        speech = (load_audio(example_speech)[:24000] * 32767).astype(np.int16)  # 1.5 s
        counts, key = [], None
        for i in range(0, len(speech), 8000):  # 0.5 s chunks, as the tab streams them
            path, key = tab.push((16000, speech[i : i + 8000]), avatar, key)
            counts.append(len(list(iter_frames(path, None))) if path else 0)
        session, closed = tab._sessions[key]["session"], []
        close = session.close
        session.close = lambda: (closed.append(True), close())
        last, key = tab.finish(key)
        assert key is None and probe_video(last).has_audio
        counts.append(len(list(iter_frames(last, None))))
        # a window of 16 frames as soon as its 0.64 s have arrived, the rest when recording stops
        assert counts == [0, 16, 16, round(1.5 * 25) - 32]
        # the finished session is closed and its folder removed; what is left (the avatar, the last chunk) expires
        assert closed and not list(tab.work_dir.glob("session-*")) and not tab._sessions
        assert sorted(p.name.split("-")[0] for p in tab.work_dir.iterdir()) == ["avatar", "last"]
        past = time.time() - tab.ttl - 10
        for entry in tab.work_dir.iterdir():
            os.utime(entry, (past, past))
        tab.sweep()
        assert list(tab.work_dir.iterdir()) == []
        with pytest.raises(gr.Error, match="avatar has expired"):
            tab.push((16000, speech[:8000]), avatar, None)
        # the work folder is named after this process, so that a later start removes it after a kill
        assert re.fullmatch(rf"latentsync-live-{re.escape(tempfiles._tag())}-.+", tab.work_dir.name)
    finally:
        tab.close()
    assert not tab.work_dir.exists()


def test_live_tab_closes_abandoned_sessions(app_live, tiny_pipe_64, tmp_path):
    tab = app_live.LiveTab(tiny_pipe_64, steps=1, max_seconds=10, ttl=60)
    try:
        closed = []
        folder = tab.work_dir / "session-x"
        folder.mkdir()
        tab._sessions["x"] = {"session": SimpleNamespace(close=lambda: closed.append("x")), "folder": folder,
                              "avatar": str(tmp_path), "used": time.time() - 120}
        past = time.time() - 120
        os.utime(folder, (past, past))
        tab.sweep()
        assert closed == ["x"] and not tab._sessions and not folder.exists()
    finally:
        tab.close()
