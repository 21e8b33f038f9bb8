"""SyncNet evaluation: accuracy, offset/confidence statistics, classic SyncNet v2 loading, ``latentsync eval``."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ffmpeg, shared_file, write_video

from latentsync.commands import main as cli_main
from latentsync.errors import LatentSyncInputError
from latentsync.commands.eval import EVAL_COMMANDS, register_eval_command
from latentsync.eval.sync_confidence import (
    classic_face_crops,
    classic_mfcc,
    estimate_sync,
    load_sync_model,
    offset_confidence,
)
from latentsync.eval.syncnet_acc import evaluate_syncnet
from latentsync.models import StableSyncNet, SyncNetV2


@pytest.fixture(scope="module")
def clips_dir(sync_clips_dir):
    return sync_clips_dir


# ---------------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("true_offset", [0, 3, -5])
def test_offset_confidence_recovers_known_shift(metric, true_offset):
    g = torch.Generator().manual_seed(0)
    n, d = 80, 32
    base = torch.rand(n + 20, d, generator=g)
    visual = base[10 : 10 + n]
    # the audio feature matching video frame i sits at i - offset (syncnet_python's convention)
    audio = base[10 + true_offset : 10 + true_offset + n] + 0.05 * torch.rand(n, d, generator=g)
    est = offset_confidence(visual, audio, vshift=8, metric=metric)
    assert est.offset == true_offset
    assert est.confidence > 0.05
    assert len(est.distances) == 17 and est.num_windows == n
    assert est.distances[8 - true_offset] == pytest.approx(est.min_distance)
    assert est.confidence == pytest.approx(float(np.median(est.distances)) - est.min_distance, abs=1e-6)


def test_offset_confidence_no_sync_has_low_confidence():
    g = torch.Generator().manual_seed(1)
    visual, audio = torch.rand(200, 16, generator=g), torch.rand(200, 16, generator=g)
    synced = offset_confidence(visual, visual + 0.01, vshift=5)
    unsynced = offset_confidence(visual, audio, vshift=5)
    assert unsynced.confidence < 0.2 * synced.confidence
    with pytest.raises(ValueError, match="metric"):
        offset_confidence(visual, audio, metric="manhattan")
    with pytest.raises(ValueError, match="no windows"):
        offset_confidence(visual[:0], audio[:0])


# ---------------------------------------------------------------------------------------------------- accuracy


class _CosineStub(torch.nn.Module):
    """Returns embeddings whose cosine equals ``frames[:, 0, 0, 0]`` (to check the accuracy bookkeeping)."""

    config = SimpleNamespace(latent_space=False, num_frames=16)

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, frames, mel):
        c = frames[:, 0, 0, 0].clamp(0, 1)
        visual = torch.stack([torch.ones_like(c), torch.zeros_like(c)], 1)
        audio = torch.stack([c, torch.sqrt(1 - c**2)], 1)
        return visual, audio


def test_evaluate_syncnet_counts_correctly():
    cos = torch.tensor([0.9, 0.6, 0.4, 0.2, 0.7, 0.1])
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    batches = [{"frames": cos[i : i + 2].reshape(2, 1, 1, 1).expand(2, 48, 1, 1), "mel": torch.zeros(2, 1, 80, 52),
                "label": labels[i : i + 2]} for i in range(0, 6, 2)]
    res = evaluate_syncnet(_CosineStub(), batches, progress=False)
    assert res.num_samples == 6
    assert res.accuracy == pytest.approx(4 / 6)  # 0.4 (positive) and 0.7 (negative) are wrong
    assert res.positive_accuracy == pytest.approx(2 / 3) and res.negative_accuracy == pytest.approx(2 / 3)
    expected = -(np.log(0.9) + np.log(0.6) + np.log(0.4) + np.log(0.8) + np.log(0.3) + np.log(0.9)) / 6
    assert res.loss == pytest.approx(expected, rel=1e-5)
    assert res.mean_positive_cosine == pytest.approx((0.9 + 0.6 + 0.4) / 3, rel=1e-5)


# ---------------------------------------------------------------------------------------------------- classic SyncNet


def test_syncnet_v2_loads_syncnet_python_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = SyncNetV2().eval()
    state = {f"__S__.{k}": v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "syncnet_v2.model")
    model = SyncNetV2.from_syncnet_python(tmp_path / "syncnet_v2.model")
    lips = torch.rand(2, 3, 5, 224, 224) * 255
    mfcc = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        lip_feat, aud_feat = model(lips, mfcc)
        torch.testing.assert_close(lip_feat, reference.forward_lip(lips))
    assert lip_feat.shape == aud_feat.shape == (2, 1024)
    assert isinstance(load_sync_model(tmp_path / "syncnet_v2.model"), SyncNetV2)
    torch.save({"netcnnaud.0.weight": torch.zeros(3)}, tmp_path / "bad.model")
    with pytest.raises(LatentSyncInputError, match="does not match the classic SyncNet"):
        SyncNetV2.from_syncnet_python(tmp_path / "bad.model")
    with pytest.raises(LatentSyncInputError, match="not found"):
        SyncNetV2.from_syncnet_python(tmp_path / "missing.model")


def test_classic_mfcc_and_crops():
    mfcc = classic_mfcc(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    assert mfcc.shape[0] == 13 and 98 <= mfcc.shape[1] <= 100  # 100 Hz
    frames = [np.full((200, 300, 3), i, np.uint8) for i in range(20)]
    boxes = np.tile([100.0, 50.0, 180.0, 150.0], (20, 1))
    crops = classic_face_crops(frames, boxes)
    assert crops.shape == (20, 224, 224, 3)


def test_estimate_sync_on_aligned_clip(clips_dir, tiny_syncnet_dir, tmp_path):
    model = StableSyncNet.from_pretrained(tiny_syncnet_dir)
    est = estimate_sync(clips_dir / "b.mp4", model, vshift=4, faces_aligned=True)
    assert est.num_windows == 75 - 16 + 1 and abs(est.offset) <= 4 and np.isfinite(est.confidence)
    torch.manual_seed(0)
    classic = SyncNetV2().eval()
    est2 = estimate_sync(clips_dir / "a.mp4", classic, vshift=2, max_frames=12, faces_aligned=True)
    assert est2.num_windows == 12 - 5 and len(est2.distances) == 5


def test_estimate_sync_detects_faces_on_real_clip(tmp_path, tiny_syncnet_dir):
    src = shared_file("demo1_video.mp4")
    clip = tmp_path / "demo1_1s.mp4"
    ffmpeg("-i", os.fspath(src), "-t", "1.2", "-vf", "scale=360:640", "-c:v", "libx264", "-c:a", "aac",
           os.fspath(clip))
    model = StableSyncNet.from_pretrained(tiny_syncnet_dir)
    est = estimate_sync(clip, model, vshift=3)
    assert est.num_windows >= 10 and np.isfinite(est.confidence)
    torch.manual_seed(0)
    est2 = estimate_sync(clip, SyncNetV2().eval(), vshift=2, max_frames=10)
    assert est2.num_windows == 10 - 5


def test_estimate_sync_scores_against_the_speech_track(clips_dir, tiny_syncnet_dir, tmp_path, caplog):
    """A video whose first audio track is silent and whose second holds its speech is scored against the speech (it
    was scored against the silent first track); ``audio_track`` / ``--audio-track`` choose a track by its number from
    1, and a number the file does not have is one line before the model loads."""
    import logging

    two = tmp_path / "two.mkv"
    ffmpeg("-i", os.fspath(clips_dir / "a.mp4"), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v",
           "-map", "1:a", "-map", "0:a", "-t", "3", "-c:v", "copy", "-c:a", "pcm_s16le", os.fspath(two))
    model = StableSyncNet.from_pretrained(tiny_syncnet_dir)
    kwargs = {"vshift": 2, "max_frames": 24, "faces_aligned": True}
    speech = estimate_sync(clips_dir / "a.mp4", model, **kwargs).distances  # (16-bit copy: within 1e-3)
    assert np.allclose(estimate_sync(two, model, **kwargs).distances, speech, atol=1e-3)
    assert np.allclose(estimate_sync(two, model, audio_track=2, **kwargs).distances, speech, atol=1e-3)
    silent = estimate_sync(two, model, audio_track=1, **kwargs).distances
    assert np.abs(np.array(silent) - speech).max() > 0.01, (silent, speech)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "sync-conf", os.fspath(two), "--audio-track", "3", "--model",
                         os.fspath(tmp_path / "no-model")]) == 2
    assert _errors(caplog) == [f"--audio-track 3: {two} has 2 audio tracks (numbered from 1)"]


# ---------------------------------------------------------------------------------------------------- CLI


def test_eval_cli(clips_dir, tiny_syncnet_dir, tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert cli_main(["eval", "syncnet-acc", "--model", os.fspath(tiny_syncnet_dir), "--data", os.fspath(clips_dir),
                     "--num-samples", "8", "--batch-size", "4", "--json", os.fspath(out)]) == 0
    acc = json.loads(out.read_text())
    assert acc["num_samples"] == 8 and 0 <= acc["accuracy"] <= 1 and acc["loss"] > 0
    conf = tmp_path / "conf.json"
    assert cli_main(["eval", "sync-conf", os.fspath(clips_dir / "a.mp4"), os.fspath(clips_dir / "b.mp4"),
                     "--model", os.fspath(tiny_syncnet_dir), "--aligned", "--vshift", "3", "--json",
                     os.fspath(conf)]) == 0
    result = json.loads(conf.read_text())
    assert set(result) == {os.fspath(clips_dir / "a.mp4"), os.fspath(clips_dir / "b.mp4"), "mean"}
    assert cli_main(["eval", "nope"]) == 2
    assert "syncnet-acc" in EVAL_COMMANDS and "sync-conf" in EVAL_COMMANDS
    register_eval_command("hello", lambda argv: 7)
    try:
        assert cli_main(["eval", "hello"]) == 7
    finally:
        EVAL_COMMANDS.pop("hello")
    capsys.readouterr()


def test_syncnet_acc_flags_a_net_that_predicts_one_class(clips_dir, tmp_path, caplog):
    """A SyncNet whose embeddings are constant and orthogonal (cosine 0: every pair "off-sync") scores accuracy 0.5
    on balanced pairs; the per-class accuracies (1 and 0) and a warning say what that means."""
    import logging

    from latentsync.testing import build_tiny_syncnet

    torch.manual_seed(0)
    net = build_tiny_syncnet(32)
    with torch.no_grad():  # the final GroupNorm of each tower outputs its bias: one-hot, on different channels
        for hot, tower in enumerate((net.audio_encoder, net.visual_encoder)):
            tower.norm_out.weight.zero_()
            tower.norm_out.bias.zero_()
            tower.norm_out.bias[hot] = 1.0
    net.save_pretrained(tmp_path / "constant")
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        assert cli_main(["eval", "syncnet-acc", "--model", os.fspath(tmp_path / "constant"), "--data",
                         os.fspath(clips_dir), "--num-samples", "16", "--batch-size", "8", "--json",
                         os.fspath(tmp_path / "acc.json")]) == 0
    acc = json.loads((tmp_path / "acc.json").read_text())
    assert acc["positive_accuracy"] == 0.0 and acc["negative_accuracy"] == 1.0
    assert acc["predicted_positive_rate"] == 0.0 and 0 < acc["accuracy"] < 1  # the share of off-sync pairs
    assert "calls every pair off-sync" in acc["warning"]
    assert any("calls every pair off-sync" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ---------------------------------------------------------------------------------------------------- offline
@pytest.fixture
def hub_unreachable(tmp_path, monkeypatch):
    """The Hub cannot be reached (a refused port, not offline mode) and the Hugging Face cache is empty; everything
    the offline detection switches is put back afterwards."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.fspath(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def _errors(caplog) -> list[str]:
    import logging

    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_eval_models_missing_offline_are_one_line_before_loading(clips_dir, tiny_syncnet_dir, hub_unreachable,
                                                                  tmp_path, monkeypatch, caplog):
    """Every eval subcommand checks its models as inference and training do: with the Hub unreachable a Hub model
    that is not cached (the default classic SyncNet, the FVD I3D, a mistyped --model) is one line and exit status 2
    at once, naming the option; nothing is loaded and nothing retries."""
    import logging
    import time

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("latentsync.eval.sync_confidence.load_sync_model", "latentsync.eval.videos.evaluate_videos",
                 "latentsync.eval.metrics.load_video_extractor"):
        monkeypatch.setattr(name, never)
    video = os.fspath(clips_dir / "a.mp4")
    cases = [
        (["sync-conf", video], "--model=ByteDance/LatentSync-1.5 (auxiliary/syncnet_v2.model)"),
        (["syncnet-acc", "--model", os.fspath(tmp_path / "runs" / "nope"), "--data", os.fspath(clips_dir)],
         "not found: --model="),
        (["syncnet-acc", "--model", "outputs/nope", "--data", os.fspath(clips_dir)], "--model=outputs/nope"),
        (["videos", "--generated", os.fspath(clips_dir), "--output", os.fspath(tmp_path / "r"), "--metrics", "sync"],
         "--syncnet=ByteDance/LatentSync-1.5 (auxiliary/syncnet_v2.model)"),
        (["videos", "--generated", os.fspath(clips_dir), "--reference", os.fspath(clips_dir), "--output",
          os.fspath(tmp_path / "r"), "--metrics", "fvd"], "--fvd-backbone=ByteDance/LatentSync-1.5"),
    ]
    for argv, named in cases:
        caplog.clear()
        t0 = time.time()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert cli_main(["eval", *argv]) == 2, argv
        assert time.time() - t0 < 10, argv
        errors = _errors(caplog)
        assert len(errors) == 1 and "\n" not in errors[0] and named in errors[0], (argv, errors)
    assert "leave the metric out with --metrics" in errors[0]
    assert not (tmp_path / "r").exists()


def test_fid_weights_missing_offline_are_one_line_before_loading(clips_dir, hub_unreachable, tmp_path, monkeypatch,
                                                                 caplog):
    """FID's Inception weights come by URL into torch hub's cache, not from the Hub: offline (HF_HUB_OFFLINE=1, or
    the URL's host refusing connections) with an empty cache, ``eval videos`` with FID stops at once, exit status 2,
    with one line naming the file, where it would be cached and how to provide it; nothing loads or downloads."""
    import logging
    import time

    from latentsync import model_source
    from latentsync.models import FID_WEIGHTS_URL

    local_only = model_source.host_is_reachable

    def reachable(url: str, timeout: float = 3.0) -> bool:
        assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), f"the test asked the network: {url}"
        return local_only(url, timeout)

    monkeypatch.setattr(model_source, "host_is_reachable", reachable)
    loaded = []

    def never(what: str):
        def load(*args, **kwargs):
            loaded.append(what)
            raise AssertionError(f"{what} was loaded")
        return load

    monkeypatch.setattr("latentsync.eval.videos.evaluate_videos", never("evaluate_videos"))
    monkeypatch.setattr("latentsync.eval.metrics.load_frame_extractor", never("the FID backbone"))
    monkeypatch.setattr("latentsync.eval.metrics.load_video_extractor", never("the FVD backbone"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", never("a download"))
    monkeypatch.setenv("TORCH_HOME", os.fspath(tmp_path / "torch"))  # an empty torch hub cache
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    videos = ["videos", "--generated", os.fspath(clips_dir), "--reference", os.fspath(clips_dir), "--output",
              os.fspath(tmp_path / "r")]
    unreachable = "http://127.0.0.1:9/weights/pt_inception-2015-12-05-6726825d.pth"  # a refused port
    cases = [  # (environment, arguments, what the line must say)
        ({"HF_HUB_OFFLINE": "1"}, ["--metrics", "fid"],
         [f"the FID Inception weights {cached.name} are not cached ({cached})", "(HF_HUB_OFFLINE is set)",
          f"download {FID_WEIGHTS_URL} on a machine with a connection and put it at that path",
          "pass --fid-backbone FILE; or leave the metric out with --metrics"]),
        ({}, ["--metrics", "fid", "--fid-backbone", unreachable],
         [f"not cached ({cached})", "(127.0.0.1 cannot be reached)", f"download {unreachable}"]),
        ({"HF_HUB_OFFLINE": "1"}, ["--metrics", "fid", "--fid-backbone", "nobody/fid-inception"],  # a Hub id
         ["--fid-backbone=nobody/fid-inception", "not in the Hugging Face cache"]),
        ({"HF_HUB_OFFLINE": "1"}, ["--metrics", "fid,fvd"],  # both kinds missing: still one line, naming both
         ["--fvd-backbone=ByteDance/LatentSync-1.5", f"the FID Inception weights {cached.name} are not cached"]),
    ]
    for env, argv, said in cases:
        monkeypatch.setenv("HF_HUB_OFFLINE", env.get("HF_HUB_OFFLINE", "0"))
        caplog.clear()
        start = time.time()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert cli_main(["eval", *videos, *argv]) == 2, argv
        assert time.time() - start < 10, argv
        errors = _errors(caplog)
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert all(part in errors[0] for part in said), (said, errors[0])
    assert loaded == [] and not (tmp_path / "r").exists()


def test_fid_weights_cached_load_offline(tmp_path, monkeypatch):
    """The check looks where torch hub keeps the download: with the weights there, offline, nothing is refused and
    the standard FID backbone loads from that file without the network."""
    from latentsync.eval import metrics as M
    from latentsync.models import FIDInceptionV3

    monkeypatch.setenv("TORCH_HOME", os.fspath(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("downloaded")))
    path = M.fid_weights_cache_path()
    assert path == os.fspath(tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
    torch.manual_seed(0)
    weights = FIDInceptionV3().state_dict()
    os.makedirs(os.path.dirname(path))
    torch.save(weights, path)
    M.check_fid_weights()
    loaded = M.load_frame_extractor(None)
    assert isinstance(loaded, FIDInceptionV3)
    assert all(torch.equal(value, weights[name]) for name, value in loaded.state_dict().items())


def test_eval_data_missing_is_one_line_before_the_model_loads(clips_dir, tiny_syncnet_dir, hub_unreachable, tmp_path,
                                                              monkeypatch, caplog):
    """``syncnet-acc --data``: a mistyped folder (with a near name), and a Hub dataset id that is not cached while the
    Hub cannot be reached, are one line naming --data, before the SyncNet loads."""
    import logging

    monkeypatch.setattr("latentsync.eval.sync_confidence.load_sync_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    typo = os.fspath(clips_dir.parent / (clips_dir.name + "x"))
    for data, named in [(typo, f"--data={typo} (no such file or folder; did you mean {clips_dir}?)"),
                        ("nothere", "--data=nothere is no local file or folder, and no Hub dataset cached")]:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert cli_main(["eval", "syncnet-acc", "--model", os.fspath(tiny_syncnet_dir), "--data", data]) == 2
        errors = _errors(caplog)
        assert len(errors) == 1 and named in errors[0], errors
    assert "127.0.0.1 cannot be reached" in errors[0]


def test_sync_conf_missing_video_is_one_line(tiny_syncnet_dir, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "sync-conf", os.fspath(tmp_path / "none.mp4"), "--model",
                         os.fspath(tiny_syncnet_dir)]) == 2
    assert _errors(caplog) == [f"not found: {tmp_path / 'none.mp4'} (no such file)"]


def test_sync_conf_json_is_never_a_scored_video(clips_dir, tiny_syncnet_dir, tmp_path, caplog, monkeypatch):
    """``--json`` naming a video being scored is refused before the model loads (it used to replace the video with
    the JSON); --audio with several videos is one line (it was a bare SystemExit, status 1); a --json in a missing
    folder is written there (it was a traceback after the scoring)."""
    import logging

    video = tmp_path / "a.mp4"
    video.write_bytes((clips_dir / "a.mp4").read_bytes())
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "sync-conf", os.fspath(video), "--model", os.fspath(tiny_syncnet_dir), "--aligned",
                         "--json", os.fspath(video)]) == 2
        assert "--json" in _errors(caplog)[0] and "is the input file" in _errors(caplog)[0]
        assert video.read_bytes() == (clips_dir / "a.mp4").read_bytes()
        caplog.clear()
        assert cli_main(["eval", "sync-conf", os.fspath(video), os.fspath(video), "--audio", os.fspath(video),
                         "--model", os.fspath(tiny_syncnet_dir)]) == 2
        assert _errors(caplog) == ["--audio can only be used with a single video"]
    report = tmp_path / "new" / "folder" / "conf.json"
    assert cli_main(["eval", "sync-conf", os.fspath(video), "--model", os.fspath(tiny_syncnet_dir), "--aligned",
                     "--vshift", "3", "--json", os.fspath(report)]) == 0
    assert os.fspath(video) in json.loads(report.read_text())


def test_syncnet_acc_refuses_a_classic_syncnet_in_one_line(clips_dir, tmp_path, caplog):
    import logging

    state = {f"__S__.{k}": v for k, v in SyncNetV2().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "syncnet_v2.model")
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "syncnet-acc", "--model", os.fspath(tmp_path / "syncnet_v2.model"), "--data",
                         os.fspath(clips_dir)]) == 2
    assert _errors(caplog) == [f"syncnet-acc needs a StableSyncNet (folder, Hub id or stable_syncnet.pt), and --model "
                               f"{tmp_path / 'syncnet_v2.model'} is a SyncNetV2"]


def test_sync_conf_names_a_video_it_cannot_score_and_scores_the_others(clips_dir, tiny_syncnet_dir, tmp_path, caplog):
    """A video that cannot be scored (here too short for the SyncNet's window) among several: its error names it and is
    kept in the output, the others are scored and written, exit status 1. It used to end the command with one line
    that did not say which video ("video is too short for the SyncNet ..."), and no result of the others."""
    import logging

    short = tmp_path / "short.mp4"
    ffmpeg("-i", os.fspath(clips_dir / "a.mp4"), "-frames:v", "3", "-t", "0.12", str(short))
    good = os.fspath(clips_dir / "a.mp4")
    report = tmp_path / "conf.json"
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "sync-conf", good, os.fspath(short), "--model", os.fspath(tiny_syncnet_dir),
                         "--aligned", "--vshift", "3", "--json", os.fspath(report)]) == 1
    assert any(e.startswith(f"{short}: video is too short for the SyncNet") for e in _errors(caplog))
    result = json.loads(report.read_text())
    assert "too short" in result[os.fspath(short)]["error"]
    assert result["mean"]["confidence"] == result[good]["confidence"]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="latentsync"):  # one video: one line naming it, as before status 2
        assert cli_main(["eval", "sync-conf", os.fspath(short), "--model", os.fspath(tiny_syncnet_dir),
                         "--aligned"]) == 2
    assert _errors(caplog)[0].startswith(f"{short}: video is too short for the SyncNet")


def test_eval_refuses_bad_numbers_and_raw_videos_before_scoring(clips_dir, tiny_syncnet_dir, tmp_path, caplog, capsys):
    """Counts of 0, a negative --vshift and an empty --time-range are usage errors (exit 2, one line), before the
    model loads; they were tracebacks after it (``range() arg 3 must not be zero``, ``time_range must satisfy ...``,
    ``upper bound and lower bound inconsistent``). syncnet-acc on raw videos (whole frames, not aligned faces) is
    refused as training refuses them; it reported an accuracy of squashed whole frames."""
    import logging

    model, video = os.fspath(tiny_syncnet_dir), os.fspath(clips_dir / "a.mp4")
    acc = ["syncnet-acc", "--model", model, "--data", os.fspath(clips_dir)]
    cases = [([*acc, "--num-samples", "0"], "argument --num-samples: must be at least 1, got 0"),
             ([*acc, "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
             ([*acc, "--time-range", "0.5", "0.2"], "--time-range needs 0 <= START < END <= 1, got 0.5 0.2"),
             (["sync-conf", video, "--model", model, "--vshift", "-1"],
              "argument --vshift: must be at least 0, got -1"),
             (["sync-conf", video, "--model", model, "--batch-size", "0"], "argument --batch-size: must be at least 1")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stopped:
            cli_main(["eval", *argv])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "talk.mp4", np.zeros((20, 48, 64, 3), np.uint8), crf=10)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert cli_main(["eval", "syncnet-acc", "--model", model, "--data", os.fspath(raw), "--num-samples", "4"]) == 2
    assert f"--data={raw} holds videos of 64 x 48 px, not aligned face clips" in _errors(caplog)[0]
