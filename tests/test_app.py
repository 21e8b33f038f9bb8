"""The Gradio app (app.py): input checks and error messages, model fallback, cleanup, queueing, and a real headless
Chromium driving the page (upload, click, result video; bad upload -> readable error).

Browser tests need Debian's chromium (``bash tests/setup_browser.sh``) and the playwright python package; they skip
when either is missing. Clips are trimmed from /work/shared/data (skipped when absent). The app runs the tiny
random-weight model, saved to a temporary folder and loaded back through ``LATENTSYNC_MODEL``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from conftest import ffmpeg  # noqa: E402

from latentsync.media import SAMPLE_RATE, load_audio, probe_video  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LATENTSYNC_TEST_DATA", "/work/shared/data"))
ARTIFACTS = ROOT / "test-artifacts"
STEPS = 2
MAX_SECONDS = 4
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _load_app(monkeypatch, model: str | None, **env: str):
    """Import app.py as a fresh module with the given LATENTSYNC_* settings."""
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    if model is None:
        monkeypatch.delenv("LATENTSYNC_MODEL", raising=False)
    else:
        monkeypatch.setenv("LATENTSYNC_MODEL", model)
    defaults = {"LATENTSYNC_STEPS": str(STEPS), "LATENTSYNC_MAX_SECONDS": str(MAX_SECONDS),
                "LATENTSYNC_DEVICE": "cpu", "LATENTSYNC_DTYPE": "fp32"}
    for key, value in {**defaults, **env}.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"latentsync_app_{time.monotonic_ns()}", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    """Short real clips trimmed from the shared data, plus synthetic bad inputs."""
    video, audio = DATA / "demo1_video.mp4", DATA / "demo1_audio.wav"
    if not (video.is_file() and audio.is_file()):
        pytest.skip(f"real test clips not found in {DATA} (demo1_video.mp4, demo1_audio.wav)")
    d = tmp_path_factory.mktemp("clips")
    out = {name: str(d / name) for name in
           ("face.mp4", "speech.wav", "speech_short.wav", "long.wav", "noface.mp4", "broken.mp4")}
    # 1.2 s of the portrait video scaled to 360 px wide H.264 (fast face analysis, small upload)
    ffmpeg("-i", str(video), "-t", "1.2", "-vf", "scale=360:-2", "-c:v", "libx264", "-preset", "veryfast", "-an",
            out["face.mp4"])
    ffmpeg("-ss", "1", "-i", str(audio), "-t", "1.0", out["speech.wav"])
    ffmpeg("-ss", "1", "-i", str(audio), "-t", "0.6", out["speech_short.wav"])
    ffmpeg("-ss", "1", "-i", str(audio), "-t", str(MAX_SECONDS + 2), out["long.wav"])
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=160x120:r=25:d=1", "-c:v", "libx264", out["noface.mp4"])
    Path(out["broken.mp4"]).write_bytes(b"this is not a video, just some text pretending to be one\n" * 20)
    return out


@pytest.fixture(scope="module")
def app_module(tiny_model_dir):
    mp = pytest.MonkeyPatch()
    try:
        module = _load_app(mp, str(tiny_model_dir))
        yield module
        module.demo.service.close()
    finally:
        mp.undo()


def _no_progress(*args, **kwargs) -> None:
    return None


def _error_message(service, *args) -> str:
    with pytest.raises(gr.Error) as info:
        service(*args, progress=_no_progress)
    return info.value.message


def _check_output(path: str, seconds: float) -> None:
    """The produced file is a video of the audio's length with a non-silent audio track of that length."""
    info = probe_video(path)
    assert info.has_audio, "output has no audio stream"
    assert abs(info.duration - seconds) <= 0.12, f"video lasts {info.duration} s, expected {seconds} s"
    samples = load_audio(path)
    assert abs(len(samples) / SAMPLE_RATE - seconds) <= 0.12
    assert float(np.abs(samples).max()) > 1e-3, "output audio is silent"


# ---------------------------------------------------------------------------------------------------- app logic
def test_app_defaults(app_module, tiny_model_dir):
    demo = app_module.demo
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert demo.analytics_enabled is False
    assert demo.config.model == str(tiny_model_dir) and demo.config.default_steps == STEPS
    # the saved tiny model is recognised as a test model and the page says so
    notice = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-notice"]
    assert notice and "tiny random-weight model" in notice[0].value
    # requests are queued one at a time with no cap on the queue length
    assert demo._queue.max_size is None
    assert [fn.concurrency_limit for fn in demo.fns.values() if fn.api_name == "lipsync"] == [1]


def test_official_model_falls_back_to_tiny_with_notice(monkeypatch):
    app = _load_app(monkeypatch, "tiny")
    calls = []

    def offline(name, **kwargs):
        calls.append(name)
        raise OSError(f"Cannot load model {name}: the model is not fully cached locally and the Hub is unreachable")

    monkeypatch.setattr(app.LatentSyncPipeline, "from_pretrained", offline)
    pipe, name, notice = app.load_pipeline(app.AppConfig(model=None, work_dir=Path(app.demo.config.work_dir)))
    assert calls == [app.OFFICIAL_MODEL]
    assert name == "tiny random-weight model" and pipe.unet is not None
    assert "could not be loaded" in notice and "not fully cached" in notice and "tiny" in notice
    # an explicitly named model that cannot load is an error, not a silent fallback
    with pytest.raises(OSError):
        app.load_pipeline(app.AppConfig(model="someone/missing-model"))
    app.demo.service.close()


def test_input_errors_are_readable(app_module, clips):
    service = app_module.demo.service
    ok_video, ok_audio = clips["face.mp4"], clips["speech.wav"]
    cases = {
        "Please upload a talking-face video": (None, ok_audio),
        "Please upload or record the speech audio": (ok_video, None),
        "cannot read video broken.mp4": (clips["broken.mp4"], ok_audio),
        "no face found in any frame of noface.mp4": (clips["noface.mp4"], ok_audio),
        f"accepts up to {MAX_SECONDS} s": (ok_video, clips["long.wav"]),
    }
    for expected, (video, audio) in cases.items():
        message = _error_message(service, video, audio, STEPS, 1.0, 0)
        assert expected.lower() in message.lower(), (expected, message)
        assert "Traceback" not in message and str(Path(clips["face.mp4"]).parent) not in message
    assert "Steps must be between" in _error_message(service, ok_video, ok_audio, 0, 1.0, 0)
    assert "must be numbers" in _error_message(service, ok_video, ok_audio, "many", 1.0, 0)
    assert list(service.work_dir.iterdir()) == [], "a failed request left files behind"


def test_size_limit_and_cleanup(app_module, clips, monkeypatch):
    service = app_module.demo.service
    monkeypatch.setattr(service.config, "max_file_mb", 0.01)
    message = _error_message(service, clips["face.mp4"], clips["speech.wav"], STEPS, 1.0, 0)
    assert "MB; this app accepts up to 0.01 MB" in message
    monkeypatch.setattr(service.config, "max_file_mb", 200.0)
    # finished job folders are swept once older than the TTL, recent ones are kept
    old, recent = service.work_dir / "old-job", service.work_dir / "recent-job"
    for job in (old, recent):
        job.mkdir()
        (job / "lipsync.mp4").write_bytes(b"x")
    past = time.time() - service.config.output_ttl - 10
    os.utime(old, (past, past))
    service.sweep()
    assert not old.exists() and recent.exists()
    shutil.rmtree(recent)


def test_unexpected_failure_is_one_readable_line(app_module, clips, monkeypatch):
    service = app_module.demo.service

    def broken_pipe(**kwargs):
        raise RuntimeError(f"boom while writing {kwargs['output_path']}\nsecond line of details")

    monkeypatch.setattr(service, "pipe", broken_pipe)
    message = _error_message(service, clips["face.mp4"], clips["speech.wav"], STEPS, 1.0, 0)
    assert message == "Lip sync failed (RuntimeError: boom while writing lipsync.mp4).", message
    assert "second line" not in message and "Traceback" not in message
    assert list(service.work_dir.iterdir()) == [], "the failed job's folder was not removed"


# ---------------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app_module):
    demo = app_module.demo
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                            max_file_size="200mb")
    yield url.rstrip("/")
    demo.close()


def test_queue_serves_concurrent_requests(server, clips, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=str(tmp_path))

    def submit(seed: int):
        return client.submit(handle_file(clips["face.mp4"]), handle_file(clips["speech_short.wav"]), STEPS, 1.0,
                             seed, api_name="/lipsync")

    jobs = [submit(seed) for seed in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: job.result(timeout=240), jobs))
    paths = [r[0]["video"] if isinstance(r[0], dict) else r[0] for r in results]
    assert len(set(paths)) == 2
    for path, (_, status) in zip(paths, results, strict=True):
        assert status.startswith("Done")
        _check_output(path, 0.6)


# ---------------------------------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_EXECUTABLE"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium not found: run `bash tests/setup_browser.sh` (Debian package chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _upload(page, server: str, video: str, audio: str) -> None:
    page.goto(server, wait_until="networkidle")
    page.locator("#video-input input[type=file]").set_input_files(video)
    page.locator("#audio-input input[type=file]").set_input_files(audio)
    page.locator("#video-input video").wait_for(state="attached", timeout=30_000)  # uploaded: preview shown
    page.locator("#audio-input [data-testid^=audio-player]").wait_for(state="attached", timeout=30_000)


def test_browser_lipsync(server, page, clips, tmp_path):
    _upload(page, server, clips["face.mp4"], clips["speech.wav"])
    page.get_by_text("Advanced settings").click()
    guidance = page.get_by_label("number input for Guidance scale (1 disables)")
    guidance.fill("1")
    guidance.press("Enter")
    seed = page.get_by_label("Seed")
    seed.fill("7")
    seed.press("Enter")
    # record every progress text shown over the output while the request runs
    page.evaluate("""() => {
        window.progressSeen = [];
        new MutationObserver(() => {
            const el = document.querySelector('#video-output .progress-level');
            if (el && el.textContent.trim()) window.progressSeen.push(el.textContent.trim());
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    page.locator("#run-button").click()
    result = page.locator("#video-output video")
    result.wait_for(timeout=180_000)
    page.get_by_text("Done in").wait_for(timeout=10_000)
    src = result.get_attribute("src")
    assert src, "result video has no source"
    output = tmp_path / "result.mp4"
    with urllib.request.urlopen(src if src.startswith("http") else server + src, timeout=30) as response:
        output.write_bytes(response.read())
    _check_output(str(output), 1.0)
    # progress came from the pipeline's tqdm bars (face analysis, then lip sync window by window)
    seen = page.evaluate("() => window.progressSeen")
    print("progress texts:", sorted({text for text in seen if "Lip sync" in text}))
    assert any("Lip sync" in text for text in seen), seen
    # the download button is there, and the browser can play the file (it reports the duration)
    duration = page.evaluate("() => document.querySelector('#video-output video').duration")
    assert abs(duration - 1.0) < 0.15, duration
    _screenshot(page, "app_finished.png")


def test_browser_example_fills_inputs(server, page):
    if not (ROOT / "examples" / "face.mp4").is_file():
        pytest.skip("examples/face.mp4 is not bundled")
    page.goto(server, wait_until="networkidle")
    page.get_by_text("speech.wav").first.click()
    page.locator("#video-input video").wait_for(state="attached", timeout=30_000)
    page.locator("#audio-input [data-testid^=audio-player]").wait_for(state="attached", timeout=30_000)
    assert "face" in page.locator("#video-input video").get_attribute("src")


def test_browser_bad_upload_shows_error(server, page, clips):
    _upload(page, server, clips["broken.mp4"], clips["speech.wav"])
    page.locator("#run-button").click()
    error = page.get_by_text("Cannot read video broken.mp4", exact=False)
    error.first.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    _screenshot(page, "app_bad_upload.png")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
