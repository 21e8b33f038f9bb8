"""Evaluation metrics: PSNR/SSIM, Fréchet distance, FID/FVD on tiny random backbones, sync confidence under a
SyncNet trained here, and the ``latentsync eval videos`` report."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import write_video, write_wav

from latentsync.commands import main as cli_main
from latentsync.eval import metrics as M
from latentsync.models import FIDInceptionV3
from latentsync.eval.videos import VideoEvalConfig, evaluate_videos, write_report


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: one thread is fastest (and stable when other jobs share the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- tiny backbones


class TinyFrameEncoder(torch.nn.Module):
    input_size = 32

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x * 2 - 1))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


class TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, (N, 3, T, H, W) in [-1, 1] -> (N, 5)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 4, 3, stride=2)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def random_frames(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.stack([np.clip(base.astype(int) + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
                     for _ in range(n)])


# ---------------------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_ssim_known_cases():
    a = random_frames(4)
    assert np.allclose(M.frame_ssim(a, a), 1.0, atol=1e-5)
    assert np.allclose(M.frame_psnr(a, a), M.PSNR_CAP)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = ((a.astype(np.float64) - b) / 255.0) ** 2
    expected = 10 * np.log10(1.0 / mse.reshape(4, -1).mean(1))
    assert np.allclose(M.frame_psnr(b, a), expected, atol=1e-3)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    s_small, s_big = M.frame_ssim(b, a).mean(), M.frame_ssim(noisy, a).mean()
    assert 0 < s_big < s_small < 1
    with pytest.raises(ValueError, match="shapes differ"):
        M.frame_psnr(a, a[:, :10])
    # SSIM against a direct float64 evaluation of Wang et al.'s formula (2-D Gaussian window, valid positions)
    x = torch.from_numpy(noisy).permute(0, 3, 1, 2).double() / 255
    y = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).repeat(3, 1, 1, 1)

    def blur(v):
        return torch.nn.functional.conv2d(v, k, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ref = ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx * mx + my * my + 1e-4) * (vx + vy + 9e-4))).mean((1, 2, 3))
    assert np.allclose(M.frame_ssim(noisy, a), ref.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- Fréchet


def test_frechet_distance_known_values():
    # 1-D Gaussians N(0, 1) and N(2, 4): (0 - 2)^2 + 1 + 4 - 2 * sqrt(4) = 5
    fd = M.frechet_distance(np.array([0.0]), np.array([[1.0]]), np.array([2.0]), np.array([[4.0]]))
    assert fd == pytest.approx(5)
    f = np.random.default_rng(0).standard_normal((300, 8))
    assert M.frechet_distance_from_features(f, f) == pytest.approx(0, abs=1e-6)
    # a mean shift of 1 in every dimension, same covariance -> D
    assert M.frechet_distance_from_features(f, f + 1) == pytest.approx(8, rel=1e-6)
    # fewer samples than dimensions: singular covariances still give ~0 for identical sets
    g = np.random.default_rng(1).standard_normal((10, 32))
    assert M.frechet_distance_from_features(g, g) == pytest.approx(0, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        M.gaussian_statistics(f[:1])


def test_fid_fvd_tiny_backbones():
    torch.manual_seed(0)
    frames, other = random_frames(40, seed=0), random_frames(40, seed=5)
    enc = TinyFrameEncoder().eval()
    assert M.fid_from_frames(frames, frames, enc) == pytest.approx(0, abs=1e-6)
    assert M.fid_from_frames(frames, other, enc) > 1e-3

    i3d = M.I3DFeatureExtractor(TinyI3D())
    clips = [random_frames(16, seed=s) for s in range(6)]
    others = [random_frames(16, seed=10 + s)[:, ::-1] for s in range(6)]
    assert M.fvd_from_clips(clips, clips, i3d) == pytest.approx(0, abs=1e-6)
    assert M.fvd_from_clips(clips, others, i3d) > 1e-4
    assert M.clip_windows(40, 16, 20, 1) == [20]
    assert M.clip_windows(30, 16, 20, 1) == [14]
    assert M.clip_windows(100, 16, 20, 3) == [20, 36, 52]
    assert M.clip_windows(10, 16, 20, 1) == []


def test_backbone_loaders_roundtrip(tmp_path):
    """The real loaders (FID Inception state dict, I3D TorchScript) on random weights saved here."""
    torch.manual_seed(0)
    inception = FIDInceptionV3().eval()
    path = tmp_path / "pt_inception-test.pth"
    torch.save(inception.state_dict(), path)
    loaded = M.load_frame_extractor(str(path))
    assert isinstance(loaded, FIDInceptionV3)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        feats = loaded(x)
        assert torch.allclose(feats, inception(x), atol=1e-5)
    assert feats.shape == (1, 2048)

    scripted = torch.jit.script(TinyI3D())
    i3d_path = tmp_path / "i3d_torchscript.pt"
    scripted.save(str(i3d_path))
    ext = M.load_video_extractor(str(i3d_path))
    assert isinstance(ext, M.I3DFeatureExtractor)
    clips = torch.rand(2, 3, 16, 32, 32)
    assert torch.allclose(ext(clips), TinyI3D.forward(scripted, clips * 2 - 1))
    # a TorchScript image encoder is accepted as FID backbone
    enc_path = tmp_path / "enc.pt"
    torch.jit.script(TinyFrameEncoder()).save(str(enc_path))
    assert M.load_frame_extractor(str(enc_path))(torch.rand(3, 3, 32, 32)).shape == (3, 6)


# ---------------------------------------------------------------------------------------------------- sync confidence

R = 32  # side of the synthetic "aligned face"
SPF = 640  # audio samples per 25 fps frame


def synthetic_talking(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mouth that opens exactly while a tone sounds (on/off runs of 3-8 frames): frames (n, R, R, 3), audio."""
    rng = np.random.default_rng(seed)
    amp, state = [], 0
    while len(amp) < n:
        amp += [state] * int(rng.integers(3, 9))
        state = 1 - state
    amp = np.array(amp[:n], dtype=np.float32)
    t = np.arange(SPF) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 660 * t + 1)
            + 0.2 * np.sin(2 * np.pi * 1500 * t))
    audio = np.concatenate([a * tone for a in amp]).astype(np.float32)
    audio += 0.003 * rng.standard_normal(len(audio)).astype(np.float32)
    frames = np.full((n, R, R, 3), 200, np.uint8)
    frames[amp > 0, R // 2 + 2 : R - 2, 4 : R - 4] = 30
    return frames, audio


@pytest.fixture(scope="module")
def trained_syncnet(tmp_path_factory):
    """A tiny StableSyncNet trained for 40 steps on the synthetic clip, saved and loaded back."""
    from latentsync.eval.sync_confidence import load_sync_model
    from latentsync.models.syncnet import syncnet_bce_loss
    from latentsync.testing import build_tiny_syncnet
    from latentsync.audio_features import mel_window, wav2lip_mel

    frames, audio = synthetic_talking()
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    model = build_tiny_syncnet(R)
    x = torch.from_numpy(frames[:, R // 2 :]).permute(0, 3, 1, 2).float() / 127.5 - 1
    mel = wav2lip_mel(audio)
    nwin = len(frames) - 20
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(40):
        s = rng.integers(0, nwin, 16)
        label = rng.uniform(size=16) < 0.5
        a_start = np.where(label, s, (s + rng.integers(8, nwin - 8, 16)) % nwin)  # negatives: other windows
        v = torch.stack([x[i : i + 16].flatten(0, 1) for i in s])
        m = torch.stack([torch.from_numpy(mel_window(mel, int(j)))[None] for j in a_start])
        loss = syncnet_bce_loss(*model(v, m), torch.from_numpy(label.astype(np.float32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("syncnet") / "tiny-syncnet"
    model.save_pretrained(folder)
    return str(folder), load_sync_model(str(folder)), frames, audio


def test_shifted_audio_lowers_sync_confidence(trained_syncnet, tmp_path):
    from latentsync.data.prepare import SyncNetChecker, shifted_audio
    from latentsync.eval.sync_confidence import estimate_sync

    _, model, frames, audio = trained_syncnet
    video = write_video(tmp_path / "talk.mp4", frames, audio=audio, crf=10)
    results = {}
    for shift in (0, 3, 40):
        wav = tmp_path / f"shift{shift}.wav"
        write_wav(wav, np.concatenate([np.zeros(shift * SPF, np.float32), audio])[: len(audio)])
        results[shift] = estimate_sync(video, model, audio=str(wav), faces_aligned=True)
    aligned, small, far = results[0], results[3], results[40]
    # audio 40 frames late is beyond the searched +-15 frames: no clear minimum any more
    assert aligned.confidence > 1.5 * far.confidence, (aligned, far)
    assert aligned.min_distance < far.min_distance
    # a 3-frame delay is found as such (relative to the aligned estimate)
    assert small.offset - aligned.offset == -3, (aligned.offset, small.offset)

    # the data pipeline's checker reports the delay with the sign shifted_audio() expects, which undoes it
    checker = SyncNetChecker(model)
    delayed = np.concatenate([np.zeros(3 * SPF, np.float32), audio])
    off0, _ = checker(list(frames), audio, 0)
    off3, _ = checker(list(frames), delayed, 0)
    assert 2 <= off3 - off0 <= 4, (off0, off3)  # the sound is late in `delayed`: a positive offset
    assert np.array_equal(shifted_audio(delayed, 0, 100, 3), audio[: 100 * SPF])
    assert np.array_equal(shifted_audio(audio, 10, 20, -3), audio[7 * SPF : 17 * SPF])
    edge = shifted_audio(audio, 0, 10, -2)
    assert np.all(edge[: 2 * SPF] == 0) and np.array_equal(edge[2 * SPF :], audio[: 8 * SPF])


# ---------------------------------------------------------------------------------------------------- eval videos


def test_eval_videos_cli_report(trained_syncnet, tmp_path):
    folder, _, frames, audio = trained_syncnet
    big = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_NEAREST) for f in frames[:48]])
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        tinted = np.clip(big.astype(int) + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8)
        write_video(ref / f"clip{k}.mp4", tinted, audio=audio[: len(big) * SPF], crf=10)
    shutil.copy(ref / "clip0.mp4", gen / "clip0.mp4")
    shutil.copy(ref / "clip1.mp4", gen / "clip1.mp4")
    noisy = np.clip(big.astype(int) + rng.integers(-50, 50, big.shape), 0, 255).astype(np.uint8)
    write_video(gen / "clip2.mp4", noisy, audio=audio[: len(big) * SPF], crf=10)

    enc_path, i3d_path = tmp_path / "enc.pt", tmp_path / "i3d.pt"
    torch.manual_seed(0)
    torch.jit.script(TinyFrameEncoder()).save(str(enc_path))
    torch.jit.script(TinyI3D()).save(str(i3d_path))
    out = tmp_path / "report"
    rc = cli_main(["eval", "videos", "--generated", str(gen), "--reference", str(ref), "--output", str(out),
                   "--crop", "none", "--crop-size", "64", "--fid-backbone", str(enc_path), "--fvd-backbone",
                   str(i3d_path), "--syncnet", folder, "--aligned", "--device", "cpu"])
    assert rc == 0
    for name in ("metrics.json", "metrics.csv", "summary.png", "summary.html"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    rows = {r["name"]: r for r in report["videos"]}
    assert rows["clip0"]["psnr"] == pytest.approx(M.PSNR_CAP) and rows["clip0"]["ssim"] == pytest.approx(1, abs=1e-5)
    assert rows["clip2"]["psnr"] < 30 and rows["clip2"]["ssim"] < 0.9
    assert rows["clip0"]["frames"] == 48
    s = report["summary"]
    assert s["num_pairs"] == 3 and s["fid"] > 0 and s["fvd"] >= 0
    assert s["fid_frames"] == [144, 144] and s["fvd_clips"] == [3, 3]
    assert all(r["lse_c"] is not None and r["lse_d"] is not None for r in report["videos"])
    assert "clip2" in (out / "summary.html").read_text()

    # identical sets: FID and FVD ~ 0 (Python API, tiny in-memory backbones)
    shutil.copy(ref / "clip2.mp4", gen / "clip2.mp4")
    rep = evaluate_videos(str(gen), str(ref), VideoEvalConfig(metrics=("psnr", "ssim", "fid", "fvd"), crop="none"),
                          frame_extractor=TinyFrameEncoder().eval(), video_extractor=M.I3DFeatureExtractor(TinyI3D()))
    assert rep["summary"]["fid"] == pytest.approx(0, abs=1e-4)
    assert rep["summary"]["fvd"] == pytest.approx(0, abs=1e-4)
    assert rep["summary"]["ssim"] == pytest.approx(1, abs=1e-5)
    paths = write_report(rep, str(tmp_path / "r2"))
    assert os.path.isfile(paths["png"])


def test_eval_videos_bad_input(tmp_path):
    from latentsync.errors import LatentSyncInputError

    (tmp_path / "gen").mkdir()
    with pytest.raises(LatentSyncInputError, match="no videos"):
        evaluate_videos(str(tmp_path / "gen"), None, VideoEvalConfig(metrics=("sync",)))
    write_video(tmp_path / "gen" / "a.mp4", random_frames(4), crf=10)
    with pytest.raises(LatentSyncInputError, match="need reference"):
        evaluate_videos(str(tmp_path / "gen"), None, VideoEvalConfig(metrics=("psnr",)))
    with pytest.raises(LatentSyncInputError, match="unknown metric"):
        VideoEvalConfig(metrics=("lpips",))


def test_eval_videos_output_checked_first_and_report_atomic(tmp_path, monkeypatch):
    from latentsync.eval import videos as V

    gen = tmp_path / "gen"
    gen.mkdir()
    write_video(gen / "a.mp4", random_frames(12), crf=10)
    # --output naming a file (here the generated video) ends at once with one line, not after the evaluation
    monkeypatch.setattr(V, "evaluate_videos", lambda *a, **k: pytest.fail("evaluated before checking --output"))
    rc = cli_main(["eval", "videos", "--generated", str(gen), "--reference", str(gen), "--output",
                   str(gen / "a.mp4"), "--metrics", "psnr,ssim", "--crop", "none"])
    assert rc == 2 and (gen / "a.mp4").stat().st_size > 0
    monkeypatch.undo()

    report = evaluate_videos(str(gen), str(gen), VideoEvalConfig(metrics=("psnr", "ssim"), crop="none"))
    out = tmp_path / "report"
    write_report(report, str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["metrics.csv", "metrics.json", "summary.html", "summary.png"]

    def broken_plot(report: dict, path: str) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(V, "_plot", broken_plot)
    report["videos"][0]["psnr"] = 1.0
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(report, str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, whole; no partial files


def test_eval_videos_settings_validated():
    from latentsync.errors import LatentSyncInputError

    with pytest.raises(LatentSyncInputError, match="max frames"):
        VideoEvalConfig(metrics=("psnr",), max_frames=0)
    with pytest.raises(LatentSyncInputError, match="SSIM window"):
        VideoEvalConfig(metrics=("ssim",), crop_size=8)
    with pytest.raises(LatentSyncInputError, match="FVD clips"):
        VideoEvalConfig(metrics=("fvd",), fvd_clips_per_video=0)
    VideoEvalConfig(metrics=("psnr",), crop_size=8)  # no SSIM: any size


def test_eval_videos_single_files_broken_reference_and_no_face(tmp_path, caplog):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    frames = np.repeat(np.repeat(np.linspace(0, 255, 48).astype(np.uint8)[None, :, None], 48, 0)[None], 8, 0)
    frames = np.repeat(frames, 3, axis=3)  # a grey ramp: no face
    write_video(gen / "out.mp4", frames, crf=10)
    write_video(ref / "original.mp4", frames, crf=10)
    (ref / "zz_broken.mp4").write_bytes(b"")  # an unpaired, unreadable reference
    # two files: a pair whatever their names; a video without a face: said, not silent
    with caplog.at_level("WARNING"):
        rep = evaluate_videos(str(gen / "out.mp4"), str(ref / "original.mp4"), VideoEvalConfig(metrics=("psnr",)))
    assert rep["summary"]["num_pairs"] == 1 and rep["summary"]["psnr"] == pytest.approx(M.PSNR_CAP)
    assert "no face found" in caplog.text
    # FID over the folder: the broken reference is reported, the others still scored
    write_video(gen / "original.mp4", frames, crf=10)
    rep = evaluate_videos(str(gen), str(ref), VideoEvalConfig(metrics=("psnr", "fid"), crop="none"),
                          frame_extractor=TinyFrameEncoder().eval())
    assert list(rep["summary"]["reference_errors"]) == ["zz_broken"]
    assert rep["summary"]["fid_frames"] == [16, 8]


def test_eval_videos_failed_video_leaves_no_frames(tmp_path, monkeypatch):
    from latentsync.errors import InvalidVideoError
    from latentsync.eval import videos as V

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for folder in (gen, ref):
        folder.mkdir()
        for name in ("a", "bad"):
            write_video(folder / f"{name}.mp4", random_frames(20, seed=len(name)), crf=10)
    frames = V._frames

    def failing(path: str, max_frames: int | None):
        for i, frame in enumerate(frames(path, max_frames)):
            if i == 12 and os.path.basename(os.path.dirname(path)) == "gen" and "bad" in path:
                raise InvalidVideoError(f"error while decoding {path}: broken")
            yield frame

    monkeypatch.setattr(V, "_frames", failing)
    rep = evaluate_videos(str(gen), str(ref), VideoEvalConfig(metrics=("psnr", "fid", "fvd"), crop="none",
                                                              batch_size=4, fvd_start=0, fvd_frames=4),
                          frame_extractor=TinyFrameEncoder().eval(), video_extractor=M.I3DFeatureExtractor(TinyI3D()))
    # the failed video adds nothing; its reference still counts in the real set, once
    assert rep["summary"]["fid_frames"] == [20, 40] and rep["summary"]["fvd_clips"] == [1, 2]
    rows = {r["name"]: r for r in rep["videos"]}
    assert "broken" in rows["bad"]["error"] and rep["summary"]["num_errors"] == 1


def test_eval_videos_warns_when_a_video_is_stretched_to_its_reference(tmp_path, caplog):
    """A generated video of another shape than its reference is resized to it before PSNR/SSIM: a changed aspect ratio
    (a 16:9 output of a 9:16 reference) distorts the faces compared, which the report alone does not show; a plain
    change of size (half resolution) is not worth a warning."""
    ref = random_frames(4, size=48)
    write_video(tmp_path / "ref.mp4", ref, crf=10)
    write_video(tmp_path / "half.mp4", ref[:, ::2, ::2], crf=10)
    write_video(tmp_path / "wide.mp4", np.concatenate([ref, ref], axis=2), crf=10)
    cfg = VideoEvalConfig(metrics=("psnr",), crop="none")
    with caplog.at_level("WARNING", logger="latentsync"):
        evaluate_videos(str(tmp_path / "half.mp4"), str(tmp_path / "ref.mp4"), cfg)
    assert "stretched" not in caplog.text
    with caplog.at_level("WARNING", logger="latentsync"):
        evaluate_videos(str(tmp_path / "wide.mp4"), str(tmp_path / "ref.mp4"), cfg)
    assert "wide.mp4 is 96x48 and its reference 48x48: its frames were stretched" in caplog.text


def test_metrics_csv_holds_numbers_in_full_and_empty_cells_for_missing_values(tmp_path):
    """metrics.csv is read by scripts and spreadsheets: a value that is missing (no reference, no sync score) is an
    empty cell and the others are the numbers of metrics.json. It used to hold ``-`` for a NaN next to empty cells
    for a None (pandas then read the whole column as text: ``mean()`` failed) and numbers cut to 4 digits."""
    import csv

    report = {"summary": {"num_generated": 2}, "settings": {},
              "videos": [{"name": "a", "reference": "a.mp4", "psnr": 41.496188201904296, "sync_offset": None,
                          "lse_c": float("nan"), "sync_error": "video is too short for the SyncNet"},
                         {"name": "b", "reference": None, "psnr": float("nan"), "sync_offset": 1,
                          "lse_c": np.float32(0.125)}]}
    write_report(report, str(tmp_path))
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["psnr"] == "41.496188201904296" and rows[0]["sync_offset"] == "" and rows[0]["lse_c"] == ""
    assert rows[1]["reference"] == "" and rows[1]["psnr"] == "" and rows[1]["lse_c"] == "0.125"
    assert "-" not in {cell for row in rows for cell in row.values()}


def test_eval_videos_names_the_videos_left_out_of_a_metric(tmp_path, caplog):
    """A generated video without a same-named reference (no PSNR/SSIM) and a video too short for an FVD clip are
    named in the log. The first was silent (only ``num_pairs`` in the summary hinted at it); the second said "video
    too short for an FVD clip (8 < 16 frames)" without saying which video."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    write_video(gen / "a.mp4", random_frames(20), crf=10)
    write_video(ref / "a.mp4", random_frames(20), crf=10)
    write_video(gen / "a_synced.mp4", random_frames(8, seed=1), crf=10)
    write_video(ref / "other.mp4", random_frames(20, seed=2), crf=10)
    cfg = VideoEvalConfig(metrics=("psnr", "fvd"), crop="none", fvd_start=0)
    with caplog.at_level("WARNING", logger="latentsync"):
        rep = evaluate_videos(str(gen), str(ref), cfg, video_extractor=M.I3DFeatureExtractor(TinyI3D()))
    assert rep["summary"]["num_pairs"] == 1 and rep["summary"]["fvd_clips"] == [1, 2]
    assert "no reference of the same name, so no PSNR/SSIM, for 1 generated video: a_synced" in caplog.text
    assert f"{gen / 'a_synced.mp4'}: no FVD clip, 8 frames read (16 needed)" in caplog.text


def test_eval_videos_pairs_names_in_either_unicode_form(tmp_path):
    """A reference named on macOS (``é`` saved as ``e`` + an accent) pairs with the generated video of the same name
    typed as one character, as ``latentsync batch`` pairs its names: it was "PSNR/SSIM compare generated and
    reference videos with the same file name; none match"."""
    import unicodedata

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    frames = random_frames(4)
    write_video(gen / unicodedata.normalize("NFC", "café.mp4"), frames, crf=10)
    write_video(ref / unicodedata.normalize("NFD", "café.mp4"), frames, crf=10)
    rep = evaluate_videos(str(gen), str(ref), VideoEvalConfig(metrics=("psnr",), crop="none"))
    assert rep["summary"]["num_pairs"] == 1 and rep["summary"]["psnr"] == pytest.approx(M.PSNR_CAP)


def test_fvd_backbone_from_a_local_copy_of_its_hub_repository(tmp_path):
    """``--fvd-backbone DIR``, a local copy of the Hub repository (``DIR/auxiliary/i3d_torchscript.pt``), as the
    offline message advises ("pass a local folder instead (e.g. --fvd-backbone=DIR)"): it was taken for a Hub id
    ("Repo id must be in the form 'repo_name' or 'namespace/repo_name'"). A folder without the file is named."""
    (tmp_path / "ckpt" / "auxiliary").mkdir(parents=True)
    scripted = torch.jit.script(TinyI3D())
    scripted.save(str(tmp_path / "ckpt" / "auxiliary" / "i3d_torchscript.pt"))
    ext = M.load_video_extractor(str(tmp_path / "ckpt"))
    clips = torch.rand(1, 3, 16, 32, 32)
    assert torch.allclose(ext(clips), TinyI3D.forward(scripted, clips * 2 - 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="auxiliary/i3d_torchscript.pt not found in the folder .*empty"):
        M.load_video_extractor(str(tmp_path / "empty"))
