"""The app's live tab: prepare an avatar from an uploaded video once, then speak into the microphone and watch it
lip-synced, one 16-frame window at a time (latency: one window of speech, 0.64 s, plus its compute).

Built by [`build_live_tab`] inside the app's Blocks. Gradio streams the microphone in chunks to [`LiveTab.push`],
which feeds the pipeline's [`~latentsync.live.LiveSession`] and returns each batch of new frames (with the speech they
go with) as a short MP4 chunk for Gradio's streaming video output. Gradio needs the ``ffmpeg`` and ``ffprobe``
programs to stream video out; where they are missing the tab says so instead of offering the microphone.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from gradio.context import get_blocks_context
from scipy.signal import resample_poly

from latentsync.app_support import remove_expired, visitor_reason
from latentsync.errors import LatentSyncInputError
from latentsync.live import LiveFrame
from latentsync.media import SAMPLE_RATE, VideoWriter, probe_video, write_wav
from latentsync.pipeline import LatentSyncPipeline
from latentsync.tempfiles import make_work_dir, remove_work_dir

logger = logging.getLogger("latentsync.app")


def microphone_samples(chunk: tuple[int, np.ndarray]) -> np.ndarray:
    """A Gradio microphone chunk ``(rate, samples)`` (int16 or float, mono or channels last) as mono float32
    16 kHz samples."""
    rate, data = chunk
    samples = np.asarray(data)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max)
    samples = samples.astype(np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(int(rate), SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return samples


def _page(request: gr.Request | None) -> str | None:
    """The page (Gradio session) an event came from, or None (a call without one)."""
    return getattr(request, "session_hash", None) or None


class LiveTab:
    """The live tab's state: prepared avatars and running sessions, each in its own folder of a work folder named
    after this process (a later start removes it after a kill). A session's folder goes when its recording
    finishes; a page that is closed or reloaded releases its sessions and avatars at once ([`release`], the page's
    unload event); avatars, last chunks and sessions of pages that never said goodbye expire ``ttl`` seconds after
    their last use, as the app's results do."""

    def __init__(self, pipe: LatentSyncPipeline, steps: int, max_seconds: float, lock: threading.Lock | None = None,
                 ttl: float = 900.0):
        self.pipe, self.steps, self.max_seconds, self.ttl = pipe, steps, max_seconds, ttl
        self.work_dir = Path(make_work_dir("live"))
        self._lock = lock or threading.Lock()  # the pipeline is shared with the main tab and not re-entrant
        self._sessions: dict[str, dict[str, Any]] = {}
        self._avatars: dict[str, str] = {}  # avatar folder -> the page that prepared it
        self._left: dict[str, float] = {}  # pages closed (their unload event), with when: for ttl
        self._ended: dict[str, float] = {}  # sessions finished or released, with when: for ttl

    def prepare(self, video: str | None, request: gr.Request | None = None) -> tuple[str | None, str]:
        """Prepare the avatar of an uploaded video; returns its folder and a status line."""
        if not video:
            raise gr.Error("Please upload a talking-face video first.", print_exception=False)
        self.sweep()
        try:
            seconds = probe_video(video).duration
            if seconds > self.max_seconds:
                raise gr.Error(f"The video is {seconds:.1f} s long; an avatar takes up to {self.max_seconds:g} s.",
                               print_exception=False)
            folder = self.work_dir / f"avatar-{uuid.uuid4().hex}"
            with self._lock:
                avatar = self.pipe.prepare_avatar(video, folder)
        except LatentSyncInputError as exc:
            raise gr.Error(visitor_reason(str(exc), {video: Path(video).name}), print_exception=False) from None
        if _page(request):
            self._avatars[str(folder)] = _page(request)
        return str(folder), (f"Avatar ready: {avatar.num_frames} frames, {len(avatar.crops)} with a face. Press "
                             "record and speak.")

    def push(self, chunk: tuple[int, np.ndarray] | None, avatar: str | None, key: str | None,
             request: gr.Request | None = None) -> tuple[str | None, str | None]:
        """One microphone chunk in; returns an MP4 chunk of the frames that became ready (or None) and the
        session key."""
        if chunk is None:
            return None, key
        if not avatar:
            raise gr.Error("Prepare an avatar first (upload a video, then press Prepare).", print_exception=False)
        if key is None or key not in self._sessions:
            # a chunk still on its way from a page that was closed, or of a recording that has stopped (it would
            # start a session of its own, kept until it expired, whose speech the next recording would begin with)
            if _page(request) in self._left or key in self._ended:
                return None, None
            self.sweep()
            if not Path(avatar).is_dir():
                raise gr.Error("This avatar has expired: press Prepare again.", print_exception=False)
            os.utime(avatar)  # in use: it expires a ttl after its last recording
            key = uuid.uuid4().hex
            folder = self.work_dir / f"session-{key}"
            folder.mkdir()
            session = self.pipe.live_session(avatar, num_inference_steps=self.steps,
                                             generator=torch.Generator().manual_seed(1247))
            self._sessions[key] = {"session": session, "folder": folder, "audio": [], "sent": 0, "count": 0,
                                   "avatar": avatar, "used": time.time(), "page": _page(request), "closed": False,
                                   "lock": threading.Lock()}
        state = self._sessions.get(key)
        if state is None:  # released meanwhile (the page was closed)
            return None, None
        state["used"] = time.time()
        samples = microphone_samples(chunk)
        state["audio"].append(samples)
        with self._lock, state["lock"]:
            if state["closed"]:  # released while this chunk waited for the model
                return None, None
            frames = state["session"].push(samples)
        return self._chunk(state, frames), key

    def finish(self, key: str | None) -> tuple[str | None, None]:
        """Recording stopped: the last frames (an MP4 beside the session folders, expiring like the results), then
        the session is closed and its folder removed."""
        state = self._sessions.pop(key, None) if key else None
        if state is None:
            return None, None
        self._ended[key] = time.time()
        try:
            with self._lock:
                frames = state["session"].finish()  # closes the session, even when it fails
            path = self._chunk(state, frames)
            if path is not None:  # Gradio copies it after this returns: out of the folder removed now
                last = self.work_dir / f"last-{key}.mp4"
                os.replace(path, last)
                path = str(last)
        finally:
            shutil.rmtree(state["folder"], ignore_errors=True)
        return path, None

    def release(self, request: gr.Request | None = None) -> None:
        """The page's unload event (the tab was closed or reloaded, which stops its recording without a
        stop-recording event): its live sessions are closed at once, freeing what they hold (the model's noise and
        features, the avatar's frame file, their folders), and the avatars it prepared are removed: the page that
        could use them is gone. Before, an abandoned session was kept until it expired, ``ttl`` after its last
        chunk."""
        page = _page(request)
        if page is None:
            return
        self._left[page] = time.time()
        released = 0
        for key in [k for k, state in list(self._sessions.items()) if state.get("page") == page]:
            state = self._sessions.pop(key, None)
            if state is not None:
                self._ended[key] = time.time()
                self._close(state)
                released += 1
        if released:
            logger.info("a page left while recording: its live session is closed")
        in_use = {str(state["avatar"]) for state in list(self._sessions.values())}
        for folder in [f for f, owner in list(self._avatars.items()) if owner == page]:
            self._avatars.pop(folder, None)
            if folder not in in_use:
                shutil.rmtree(folder, ignore_errors=True)

    def _close(self, state: dict[str, Any]) -> None:
        """Close a session that is no longer in ``_sessions`` (after a chunk that is using the model) and remove
        its folder."""
        # a push of this session may be running: the session is closed after it (not after the main tab's run,
        # which holds the model's lock for minutes)
        with state.get("lock") or threading.Lock():
            state["closed"] = True
            state["session"].close()
        shutil.rmtree(state["folder"], ignore_errors=True)

    def sweep(self) -> None:
        """Close the sessions unused for ``ttl`` seconds (a page that left without its unload event) and remove
        the folders and files last used more than ``ttl`` seconds ago, except those of running sessions."""
        limit = time.time() - self.ttl
        for key in [k for k, state in list(self._sessions.items()) if state["used"] < limit]:
            state = self._sessions.pop(key, None)
            if state is not None:
                self._close(state)
        keep = [p for state in self._sessions.values() for p in (state["folder"], state["avatar"])]
        remove_expired(self.work_dir, self.ttl, keep)
        for folder in [f for f in list(self._avatars) if not Path(f).exists()]:
            self._avatars.pop(folder, None)
        for gone in (self._left, self._ended):
            for name in [n for n, when in list(gone.items()) if when < limit]:
                gone.pop(name, None)

    def _chunk(self, state: dict[str, Any], frames: list[LiveFrame]) -> str | None:
        """The frames as an MP4 chunk with the speech they cover (the speech is consumed as it is used)."""
        if not frames:
            return None
        fps = state["session"].fps
        audio = np.concatenate(state["audio"]) if state["audio"] else np.zeros(0, np.float32)
        start = state["sent"]
        end = int(round((frames[-1].index + 1) / fps * SAMPLE_RATE))
        speech = audio[: end - start]
        state["audio"] = [audio[end - start :]]
        state["sent"] = end
        state["count"] += 1
        folder = state["folder"]
        for old in folder.glob("chunk-*"):  # Gradio has copied the earlier chunks
            old.unlink(missing_ok=True)
        wav = folder / f"chunk-{state['count']}.wav"
        write_wav(wav, np.pad(speech, (0, max(0, end - start - len(speech)))))
        path = folder / f"chunk-{state['count']}.mp4"
        with VideoWriter(path, fps, audio_path=os.fspath(wav)) as writer:
            for frame in frames:
                writer.write(frame.image)
        return str(path)

    def close(self) -> None:
        for state in self._sessions.values():
            state["session"].close()
        self._sessions.clear()
        remove_work_dir(self.work_dir)


def streaming_available() -> bool:
    """Whether Gradio can stream video out here (it runs the ``ffmpeg`` and ``ffprobe`` programs)."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def build_live_tab(pipe: LatentSyncPipeline, steps: int, max_seconds: float, lock: threading.Lock | None = None,
                   ttl: float = 900.0) -> LiveTab:
    """The live tab's components and events, inside the current Blocks (avatars expire ``ttl`` s after last use)."""
    tab = LiveTab(pipe, steps, max_seconds, lock, ttl)
    with gr.Tab("Live (microphone)", elem_id="live-tab"):
        gr.Markdown("Prepare an avatar from a short talking-face video once, then record: the lip-synced video "
                    "follows your speech with about 0.64 s of delay plus the compute of each 16-frame window.")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Avatar video", sources=["upload"], height=300, elem_id="live-video")
                prepare = gr.Button("Prepare avatar", elem_id="live-prepare")
                status = gr.Markdown(label="Avatar status", elem_id="live-status")
            with gr.Column():
                if streaming_available():
                    mic = gr.Audio(label="Speak", sources=["microphone"], streaming=True, type="numpy",
                                   elem_id="live-mic")
                    out = gr.Video(label="Lip-synced (live)", streaming=True, autoplay=True, interactive=False,
                                   elem_id="live-output")
                else:
                    mic = out = None
                    gr.Markdown("Live video needs the `ffmpeg` and `ffprobe` programs (Gradio streams video with "
                                "them); install ffmpeg to use this tab.", elem_id="live-unavailable")
        avatar_state, session_state = gr.State(None), gr.State(None)
        # a closed or reloaded page sends no stop-recording event: its unload releases the session at once
        get_blocks_context().root_block.unload(tab.release)
        # the page's own events, not an API: the avatar and the session live in the page's state and the microphone
        # streams, so they are left out of the API page (callable still, as gr.load() of the Space needs)
        prepare.click(tab.prepare, inputs=[video], outputs=[avatar_state, status], concurrency_limit=1,
                      api_visibility="undocumented")
        if mic is not None:
            mic.stream(tab.push, inputs=[mic, avatar_state, session_state], outputs=[out, session_state],
                       stream_every=0.5, concurrency_limit=1, api_visibility="undocumented")
            mic.stop_recording(tab.finish, inputs=[session_state], outputs=[out, session_state],
                               api_visibility="undocumented")
    return tab
