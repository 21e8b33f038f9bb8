"""The Hub side: a saved pipeline loads with plain diffusers in a fresh interpreter that never imports latentsync,
model cards carry real metadata, every upload goes through ``latentsync.hub.push_folder`` (tested offline against a
fake Hub that keeps files in a folder), and training pushes checkpoints and resumes from them."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from conftest import ROOT
from latentsync import LatentSyncPipeline, hub

CONFIGS = ROOT / "train" / "configs"


# ---------------------------------------------------------------------------------------------------- fake Hub
class FakeHub:
    """Just enough of ``HfApi`` for our uploads and checkpoint downloads: repos are folders under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.commits: list[dict] = []
        self.fail_uploads = False  # True: every upload fails as when the network drops


    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def files(self, repo_id: str) -> list[str]:
        base = self.repo(repo_id)
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    # HfApi methods
    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False, **_):
        self.repo(repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, commit_message=None, repo_type=None,
                      allow_patterns=None, delete_patterns=None, **_):
        if self.fail_uploads:
            raise ConnectionError("[Errno 101] Network is unreachable")
        folder, prefix = Path(folder_path), path_in_repo or ""
        local = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        allow = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
        if allow:
            local = [f for f in local if any(fnmatch.fnmatch(f, pat) for pat in allow)]
        remote_dir = self.repo(repo_id) / prefix
        deleted = []
        if delete_patterns and remote_dir.is_dir():
            for p in [p for p in remote_dir.rglob("*") if p.is_file()]:
                rel = str(p.relative_to(remote_dir))
                if rel not in local and any(fnmatch.fnmatch(rel, pat) for pat in delete_patterns):
                    p.unlink()
                    deleted.append(rel)
        for rel in local:
            target = remote_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / rel, target)
        self.commits.append({"repo_id": repo_id, "repo_type": repo_type, "path_in_repo": path_in_repo,
                             "files": sorted(local), "deleted": sorted(deleted), "message": commit_message})

    def list_repo_files(self, repo_id, **_):
        return self.files(repo_id)

    def snapshot_download(self, repo_id, allow_patterns=None, local_dir=None, **_):
        for rel in self.files(repo_id):
            if allow_patterns is None or any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                target = Path(local_dir) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.repo(repo_id) / rel, target)
        return local_dir


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Replace the Hub client wherever the package talks to the Hub, and let the trainers' check that the Hub can be
    reached pass; nothing leaves the machine."""
    from latentsync import model_source

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(model_source, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(hub, "HfApi", lambda token=None: fake)
    from latentsync.training import base

    monkeypatch.setattr(base, "HfApi", lambda token=None: fake)
    monkeypatch.setattr(base, "snapshot_download", fake.snapshot_download)
    return fake


# ---------------------------------------------------------------------------------------------------- generic loading
FRESH_INTERPRETER = """
import json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline

folder, video, audio, out, how = sys.argv[1:6]
assert "latentsync" not in sys.modules
try:
    DiffusionPipeline.from_pretrained(folder)
except ValueError as exc:
    refused = str(exc)
kwargs = {"custom_pipeline": folder} if how == "custom_pipeline" else {}
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **kwargs)
if how == "trust_remote_code":  # run it once (the other way loads the same class)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(video=video, audio=audio, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    np.save(out, result.frames)
print(json.dumps({"class": type(pipe).__module__ + "." + type(pipe).__name__, "refused": refused}))
"""


@pytest.mark.parametrize("how", ["trust_remote_code", "custom_pipeline"])
def test_plain_diffusers_loads_a_saved_pipeline_in_a_fresh_interpreter(tiny_model_dir_64, example_face, one_window,
                                                                       tmp_path, how):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": os.fspath(tmp_path / "modules")}
    out = tmp_path / "frames.npy"
    proc = subprocess.run([sys.executable, "-c", FRESH_INTERPRETER, os.fspath(tiny_model_dir_64), os.fspath(example_face),
                           os.fspath(one_window), os.fspath(out), how], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["class"] == "latentsync.pipeline.LatentSyncPipeline"
    assert "trust_remote_code=True" in report["refused"]  # without trust, diffusers says what to do
    if how != "trust_remote_code":
        return
    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir_64)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(video=example_face, audio=one_window, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0)).frames
    assert np.array_equal(np.load(out), expected)


def test_saved_folder_layout_and_own_loader_needs_no_trust(tiny_model_dir, tmp_path):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LatentSyncPipeline"]
    assert (tiny_model_dir / "pipeline.py").read_text() == hub.LOADER_SOURCE
    assert hub.has_own_loader(tiny_model_dir)
    # a pipeline.py that is not ours is never run without the caller's trust
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "pipeline.py").write_text(hub.LOADER_SOURCE + "print('surprise')\n")
    assert not hub.has_own_loader(other)
    with pytest.raises(ValueError, match="trust_remote_code"):
        LatentSyncPipeline.from_pretrained(other)


def test_model_card_has_real_metadata_and_a_working_snippet(tiny_model_dir, tiny_pipe):
    card = ModelCard.load(tiny_model_dir / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "video-to-video"
    assert card.data.license == "apache-2.0" and "lip-sync" in card.data.tags  # random weights: our licence
    assert f'DiffusionPipeline.from_pretrained("{tiny_model_dir}", trust_remote_code=True)' in card.text
    assert "<this repo>" not in card.text and "](https://github.com/)" not in card.text
    assert hub.source_url() in card.text and "Random weights" in card.text

    pushed = hub.pipeline_card(tiny_pipe, "me/lipsync", base_model="ByteDance/LatentSync-1.6",
                               datasets=["me/clips"], training={"optimisation steps": 10, "final loss": "0.12"})
    assert pushed.data.base_model == "ByteDance/LatentSync-1.6" and pushed.data.datasets == ["me/clips"]
    assert pushed.data.license == hub.OFFICIAL_LICENSE
    assert '"me/lipsync", trust_remote_code=True' in pushed.text and "| final loss | 0.12 |" in pushed.text


# ---------------------------------------------------------------------------------------------------- uploads
def test_every_upload_goes_through_push_folder():
    """No module but latentsync.hub talks to the Hub's upload API (one code path for every upload)."""
    upload = re.compile(r"\.(upload_folder|upload_file|create_commit|create_repo)\(|\bHfApi\(\)\.(upload|create)|\.push_to_hub\(")
    offenders = []
    for path in (ROOT / "src" / "latentsync").rglob("*.py"):
        if path.name == "hub.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if upload.search(line) and "list_repo_files" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_pipeline_push_to_hub_uploads_a_loadable_folder_with_its_card(tiny_pipe, fake_hub):
    repo = tiny_pipe.push_to_hub("me/tiny-lipsync", base_model="ByteDance/LatentSync-1.6")
    assert repo == "me/tiny-lipsync" and len(fake_hub.commits) == 1
    files = fake_hub.files(repo)
    assert {"model_index.json", "pipeline.py", "README.md", "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    card = ModelCard.load(fake_hub.repo(repo) / "README.md")
    assert card.data.base_model == "ByteDance/LatentSync-1.6"
    assert 'from_pretrained("me/tiny-lipsync", trust_remote_code=True)' in card.text
    loaded = LatentSyncPipeline.from_pretrained(fake_hub.repo(repo))  # what was uploaded loads back
    assert loaded.config.resolution == tiny_pipe.config.resolution


def test_save_pretrained_push_keeps_diffusers_push_options(tiny_pipe, fake_hub, tmp_path, monkeypatch):
    """``save_pretrained(..., push_to_hub=True)`` with diffusers' push keywords creates the repo private, with the
    given token, commit message and pull request (they were dropped: a public repo under the default token)."""
    seen, tokens = {}, []
    create, upload = fake_hub.create_repo, fake_hub.upload_folder

    def create_repo(repo_id, **kwargs):
        seen["private"] = kwargs.get("private")
        return create(repo_id, **kwargs)

    def upload_folder(**kwargs):
        seen["create_pr"] = kwargs.get("create_pr")
        return upload(**kwargs)

    monkeypatch.setattr(fake_hub, "create_repo", create_repo)
    monkeypatch.setattr(fake_hub, "upload_folder", upload_folder)
    monkeypatch.setattr(hub, "HfApi", lambda token=None: tokens.append(token) or fake_hub)
    tiny_pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/private-sync", private=True,
                              token="hf_secret", commit_message="first upload", create_pr=True)
    assert seen == {"private": True, "create_pr": True} and tokens == ["hf_secret"]
    assert fake_hub.commits[-1]["repo_id"] == "me/private-sync" and fake_hub.commits[-1]["message"] == "first upload"
    assert "unet/diffusion_pytorch_model.safetensors" in fake_hub.files("me/private-sync")


def test_prepare_push_uploads_parquet_shards_and_a_dataset_card(fake_hub, tmp_path):
    import datasets

    from latentsync.data.prepare.dataset import dataset_features, push_prepared

    rows = {k: [] for k in dataset_features()}
    for i in range(5):
        for k, v in {"id": f"c{i}", "video": bytes(200), "source": "a.mp4", "start": 0.0, "end": 5.0,
                     "num_frames": 125, "fps": 25.0, "resolution": 256, "sync_offset": 0, "sync_confidence": 7.5,
                     "quality_score": 30.0, "quality_scorer": "sharpness"}.items():
            rows[k].append(v)
    datasets.Dataset.from_dict(rows, features=dataset_features()).save_to_disk(tmp_path / "prepared" / "dataset")
    (tmp_path / "prepared" / "summary.md").write_text("| kept | 5 clips |\n")
    push_prepared(os.fspath(tmp_path / "prepared"), "me/clips", max_shard_size="1KB")
    commit = fake_hub.commits[-1]
    assert commit["repo_type"] == "dataset" and commit["repo_id"] == "me/clips"
    shards = [f for f in fake_hub.files("me/clips") if f.startswith("data/")]
    assert len(shards) > 1 and all(re.fullmatch(r"data/train-\d{5}-of-\d{5}\.parquet", f) for f in shards)
    back = datasets.load_dataset("parquet", data_files=[os.fspath(fake_hub.repo("me/clips") / f) for f in shards],
                                 split="train", cache_dir=os.fspath(tmp_path / "cache"))
    assert sorted(back["id"]) == [f"c{i}" for i in range(5)]
    card = (fake_hub.repo("me/clips") / "README.md").read_text()
    assert "| kept | 5 clips |" in card and 'load_dataset("me/clips"' in card and "data/train-*" in card


# ---------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def training_workspace(tmp_path_factory):
    from latentsync.testing import save_tiny_training_models, write_synthetic_clip

    root = tmp_path_factory.mktemp("hub_training")
    (root / "clips").mkdir()
    write_synthetic_clip(os.fspath(root / "clips" / "clip0.mp4"), seed=0)
    overrides = {**save_tiny_training_models(os.fspath(root / "models")), "train_data": os.fspath(root / "clips"),
                 "stage": 1, "motion_modules": "all", "trainable_modules": None, "lora_rank": 4}
    return root, overrides


def _train(overrides: dict, **extra):
    from latentsync.training.config import load_config
    from latentsync.training.unet_trainer import train

    items = {**overrides, **extra}
    return train(load_config(CONFIGS / "unet_tiny.yaml", [f"{k}={json.dumps(v)}" for k, v in items.items()]))


def test_training_pushes_checkpoints_and_the_adapter_then_resumes_from_the_hub(training_workspace, fake_hub,
                                                                              tmp_path):
    _, ov = training_workspace
    repo = "me/lipsync-lora"
    first = _train(ov, output_dir=os.fspath(tmp_path / "run"), max_train_steps=2, checkpointing_steps=1,
                   push_to_hub=True, hub_model_id=repo, hub_strategy="checkpoint")
    checkpoint_commits = [c for c in fake_hub.commits if c["path_in_repo"] == "checkpoints"]
    assert [c["message"] for c in checkpoint_commits] == ["Training checkpoint checkpoint-1",
                                                          "Training checkpoint checkpoint-2"]
    assert checkpoint_commits[1]["deleted"] and all(f.startswith("checkpoint-1/") for f in
                                                    checkpoint_commits[1]["deleted"])
    files = fake_hub.files(repo)
    assert not any(f.startswith("checkpoints/checkpoint-1/") for f in files)  # only the newest is kept
    assert any(f.startswith("checkpoints/checkpoint-2/") for f in files)
    assert "pytorch_lora_weights.safetensors" in files and "README.md" in files  # the adapter, not merged weights
    assert not any(f.startswith("unet/") for f in files)
    card = ModelCard.load(fake_hub.repo(repo) / "README.md")
    assert "lora" in card.data.tags and "| optimisation steps | 2 |" in card.text

    # a new machine: empty output folder, resume from the Hub's newest checkpoint and go on to step 3
    resumed = _train(ov, output_dir=os.fspath(tmp_path / "elsewhere"), max_train_steps=3, checkpointing_steps=100,
                     hub_model_id=repo, resume_from_checkpoint="hub")
    assert resumed["global_step"] == 3
    with open(tmp_path / "elsewhere" / "losses.jsonl") as fh:
        assert [json.loads(line)["step"] for line in fh] == [3]  # steps 1-2 came from the checkpoint
    assert first["global_step"] == 2


def test_all_checkpoints_strategy_keeps_every_checkpoint_and_merged_pipeline_is_optional(training_workspace,
                                                                                       fake_hub, tmp_path):
    _, ov = training_workspace
    _train(ov, output_dir=os.fspath(tmp_path / "run"), max_train_steps=2, checkpointing_steps=1, push_to_hub=True,
           hub_model_id="me/a", hub_strategy="all_checkpoints", hub_merged_model_id="me/a-merged")
    files = fake_hub.files("me/a")
    assert any(f.startswith("checkpoints/checkpoint-1/") for f in files)
    assert any(f.startswith("checkpoints/checkpoint-2/") for f in files)
    merged = fake_hub.files("me/a-merged")
    assert "model_index.json" in merged and "pipeline.py" in merged
    LatentSyncPipeline.from_pretrained(fake_hub.repo("me/a-merged"))


def test_hub_settings_are_checked(training_workspace):
    from latentsync.training.config import load_config

    _, ov = training_workspace
    for extra, message in [({"hub_strategy": "sometimes"}, "hub_strategy must be one of"),
                           ({"hub_strategy": "checkpoint"}, "needs push_to_hub"),
                           ({"resume_from_checkpoint": "hub"}, "need hub_model_id")]:
        cfg = load_config(CONFIGS / "unet_tiny.yaml", [f"{k}={json.dumps(v)}" for k, v in {**ov, **extra}.items()])
        with pytest.raises(ValueError, match=message):
            cfg.validate()


def test_convert_push_goes_through_the_same_path(fake_hub, tmp_path, monkeypatch):
    """``latentsync convert --push-to-hub`` uploads the converted folder with a card naming the official release."""
    from latentsync.commands import convert as convert_module
    from latentsync.loaders import official
    from latentsync.testing import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    components = {name: getattr(tiny, name) for name in ("unet", "vae", "audio_encoder", "feature_extractor",
                                                         "scheduler")}
    monkeypatch.setattr(official, "load_official_components",
                        lambda *a, **k: {**components, "resolution": 256})
    out = tmp_path / "converted"
    assert convert_module.convert(["--official", "ByteDance/LatentSync-1.6", "--output", os.fspath(out),
                                   "--push-to-hub", "me/latentsync-1.6"]) == 0
    card = ModelCard.load(fake_hub.repo("me/latentsync-1.6") / "README.md")
    assert card.data.base_model == "ByteDance/LatentSync-1.6" and card.data.license == hub.OFFICIAL_LICENSE
    assert "pipeline.py" in fake_hub.files("me/latentsync-1.6")


def test_syncnet_training_pushes_its_model_with_a_card(sync_clips_dir, fake_hub, tmp_path):
    from latentsync.models import StableSyncNet
    from latentsync.testing import tiny_syncnet_config
    from latentsync.training.config import SyncNetTrainingConfig
    from latentsync.training.syncnet_trainer import train_syncnet

    cfg = SyncNetTrainingConfig(
        model_preset=None, model_config=tiny_syncnet_config(32), train_data=os.fspath(sync_clips_dir),
        output_dir=os.fspath(tmp_path / "run"), train_time_range=[0.0, 0.7], val_time_range=[0.7, 1.0],
        train_batch_size=4, max_train_steps=2, checkpointing_steps=2, validation_steps=2, num_val_samples=8,
        val_batch_size=8, mixed_precision="no", dataloader_num_workers=0, progress=False, push_to_hub=True,
        hub_model_id="me/syncnet", hub_strategy="checkpoint")
    train_syncnet(cfg)
    files = fake_hub.files("me/syncnet")
    assert "config.json" in files and any(f.startswith("checkpoints/checkpoint-2/") for f in files)
    card = ModelCard.load(fake_hub.repo("me/syncnet") / "README.md")
    assert "syncnet" in card.data.tags and "| optimisation steps | 2 |" in card.text and "val_accuracy" in card.text
    StableSyncNet.from_pretrained(fake_hub.repo("me/syncnet"))


def test_a_failed_final_push_keeps_the_run_and_says_where_it_is(training_workspace, fake_hub, tmp_path, caplog,
                                                                capsys):
    """The network drops during the run: the checkpoint uploads warn and training goes on; the final upload fails
    with one error line naming the saved result and how to upload it later; the run's results are all there, the
    JSON summary carries ``push_error`` and the exit status is 1 (the run is done, the asked-for upload is not)."""
    import logging

    from latentsync.commands.train import train_unet_command

    _, ov = training_workspace
    fake_hub.fail_uploads = True
    out = tmp_path / "run"
    settings = {**ov, "lora_rank": 0, "max_train_steps": 2, "checkpointing_steps": 1, "push_to_hub": True,
                "hub_model_id": "me/run", "hub_strategy": "checkpoint", "output_dir": os.fspath(out)}
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        code = train_unet_command(["--config", os.fspath(CONFIGS / "unet_tiny.yaml"),
                                   *[f"{k}={json.dumps(v)}" for k, v in settings.items()]])
    assert code == 1
    pipeline = out / "pipeline"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"could not push {pipeline} to me/run (ConnectionError: [Errno 101] Network is unreachable); "
                      f"the run is complete and saved in {pipeline}: upload it later with "
                      f"`hf upload me/run {pipeline}`"]
    assert sum("could not push checkpoint-" in r.getMessage() for r in caplog.records) == 2  # warnings, went on
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["global_step"] == 2 and summary["push_error"] == errors[0]
    assert summary["pipeline"] == os.fspath(pipeline)
    LatentSyncPipeline.from_pretrained(pipeline)
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]
    assert fake_hub.commits == []
