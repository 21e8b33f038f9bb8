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
        finished = key
        last, key = tab.finish(key)
        assert key is None and probe_video(last).has_audio
        # a chunk of the stopped recording that arrives after its end starts no session of its own (it was kept until
        # it expired, and the next recording began with its speech)
        assert tab.push((16000, speech[:8000]), avatar, finished) == (None, None)
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


def test_a_closed_page_releases_its_live_session(app_live, tiny_pipe_64, example_face, example_speech):
    """A page closed (or reloaded) while recording sends no stop-recording event: its session, with what it holds
    (the model's noise and features, the avatar's frame file, its folder), stayed until it expired 15 minutes
    later. The page's unload event now closes it at once and removes the avatars the page prepared; another page's
    session is left alone."""
    tab = app_live.LiveTab(tiny_pipe_64, steps=1, max_seconds=10)
    try:
        page, other = SimpleNamespace(session_hash="page-1"), SimpleNamespace(session_hash="page-2")
        avatar, _ = tab.prepare(str(example_face), page)
        speech = (load_audio(example_speech)[:8000] * 32767).astype(np.int16)
        _, key = tab.push((16000, speech), avatar, None, page)
        state = tab._sessions[key]
        closed, close = [], state["session"].close
        state["session"].close = lambda: (closed.append(key), close())
        frame_file = Path(state["session"]._frames.path)
        other_closed = []
        folder = tab.work_dir / "session-other"
        folder.mkdir()
        tab._sessions["other"] = {"session": SimpleNamespace(close=lambda: other_closed.append(True)),
                                  "folder": folder, "avatar": avatar, "used": time.time(), "page": "page-2"}
        tab.release(other)  # page 2 leaves: its session goes, page 1's avatar stays (page 1 still uses it)
        assert other_closed and not folder.exists() and key in tab._sessions and Path(avatar).is_dir()
        tab.release(page)
        assert closed == [key] and not tab._sessions and not frame_file.exists()
        assert not state["folder"].exists() and not Path(avatar).exists()
        # a chunk of the closed page that was still on its way starts nothing
        assert tab.push((16000, speech), avatar, key, page) == (None, None) and not tab._sessions
        tab.release(None)  # an event without a page: nothing to do
    finally:
        tab.close()


def test_the_live_tab_listens_to_the_page_closing(app_live, tiny_pipe_64):
    """The live tab registers its release on the page's unload event, and Gradio hands the page (its session
    hash) to its handlers."""
    from gradio.helpers import special_args

    with gr.Blocks() as demo:
        tab = app_live.build_live_tab(tiny_pipe_64, steps=1, max_seconds=10)
    try:
        unload = [fn.fn for fn in demo.fns.values() if any(t[1] == "unload" for t in fn.targets)]
        assert tab.release in unload
        request = gr.Request(session_hash="page-1")
        for handler, inputs in ((tab.push, [None, None, None]), (tab.prepare, [None]), (tab.release, [])):
            assert special_args(handler, list(inputs), request)[0][-1] is request, handler
    finally:
        tab.close()


def test_releasing_a_session_does_not_wait_for_the_model(app_live, tiny_pipe_64, tmp_path):
    """A page's release closes its session without waiting for the model's lock, which the main tab holds for a
    whole lip sync (minutes), but after a chunk of that session that is using the model."""
    import threading

    tab = app_live.LiveTab(tiny_pipe_64, steps=1, max_seconds=10)
    try:
        closed, folder = [], tab.work_dir / "session-x"
        folder.mkdir()
        state = {"session": SimpleNamespace(close=lambda: closed.append(True)), "folder": folder,
                 "avatar": str(tmp_path), "used": time.time(), "page": "page-1", "closed": False,
                 "lock": threading.Lock()}
        tab._sessions["x"] = state
        with tab._lock:  # the main tab's lip sync is running
            release = threading.Thread(target=tab.release, args=(SimpleNamespace(session_hash="page-1"),))
            release.start()
            release.join(timeout=30)
            assert not release.is_alive() and closed == [True] and state["closed"] and not folder.exists()
    finally:
        tab.close()
