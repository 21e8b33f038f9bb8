"""SyncNet data (folder and datasets sources, positive/negative sampling) and accelerate training with resume."""

from __future__ import annotations

import json
import os
import runpy

import numpy as np
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from latentsync.data.syncnet_dataset import ClipStore, SyncNetDataset
from latentsync.testing import tiny_syncnet_config
from latentsync.training.syncnet_trainer import SyncNetTrainingConfig, load_syncnet_config, train_syncnet

TINY_MODEL = tiny_syncnet_config(32)


@pytest.fixture(scope="module")
def clips_dir(sync_clips_dir):
    return sync_clips_dir


# ---------------------------------------------------------------------------------------------------- data


def test_clip_store_folder(clips_dir):
    store = ClipStore(clips_dir, resolution=32, lower_half=True)
    assert len(store) == 2
    clip = store.load(0)
    assert clip.frames.shape == (60, 16, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.mel.shape[0] == 80 and abs(clip.mel.shape[1] - 1 - 2.4 * 80) <= 2
    assert store.load(0) is clip  # cached
    full = ClipStore(clips_dir / "a.mp4", resolution=None, lower_half=False).load(0)
    assert full.frames.shape == (60, 64, 64, 3)
    (clips_dir.parent / "empty_folder").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="no video clips"):
        ClipStore(clips_dir.parent / "empty_folder")


def test_dataset_sampling(clips_dir):
    store = ClipStore(clips_dir, resolution=32)
    ds = SyncNetDataset(store, 64, time_range=(0.0, 0.7), min_negative_offset=3, seed=5)
    labels, offsets = [], []
    for i in range(64):
        s = ds[i]
        assert s["frames"].shape == (48, 16, 32) and s["frames"].dtype == torch.float32
        assert -1.0 <= s["frames"].min() and s["frames"].max() <= 1.0
        assert s["mel"].shape == (1, 80, 52)
        labels.append(float(s["label"]))
        offsets.append(s["offset"])
    labels, offsets = np.array(labels), np.array(offsets)
    assert 0.2 < labels.mean() < 0.8
    assert (offsets[labels == 1] == 0).all()
    assert (np.abs(offsets[labels == 0]) >= 3).all()
    # deterministic per index, and index_offset continues the same stream
    torch.testing.assert_close(ds[7]["frames"], ds[7]["frames"])
    shifted = SyncNetDataset(store, 64, time_range=(0.0, 0.7), min_negative_offset=3, seed=5, index_offset=7)
    torch.testing.assert_close(shifted[0]["mel"], ds[7]["mel"])
    assert shifted[0]["offset"] == ds[7]["offset"]


def test_time_ranges_keep_windows_inside(clips_dir):
    store = ClipStore(clips_dir, resolution=32)
    train = SyncNetDataset(store, 1, time_range=(0.0, 0.7))
    val = SyncNetDataset(store, 1, time_range=(0.7, 1.0))
    clip = store.load(1)  # 75 frames
    tr, va = train.valid_starts(clip), val.valid_starts(clip)
    assert tr.min() == 0 and tr.max() + 16 <= int(0.7 * 75)
    assert va.min() >= int(np.ceil(0.7 * 75)) and va.max() + 16 <= 75
    with pytest.raises(ValueError, match="time_range"):
        SyncNetDataset(store, 1, time_range=(0.5, 0.5))
    too_short = SyncNetDataset(store, 1, time_range=(0.9, 1.0))
    with pytest.raises(ValueError, match="too short"):
        too_short[0]


def test_unreadable_clips_are_skipped(clips_dir, tmp_path):
    import shutil

    shutil.copy(clips_dir / "a.mp4", tmp_path / "a.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    ds = SyncNetDataset(ClipStore(tmp_path, resolution=32), 16, seed=0)
    assert {ds[i]["clip"] for i in range(16)} == {0}  # sorted: a.mp4 = 0, broken.mp4 = 1 is never returned
    assert ds._broken == {1}


def test_datasets_sources(clips_dir, tmp_path):
    import datasets

    raw = [(clips_dir / n).read_bytes() for n in ("a.mp4", "b.mp4")]
    ds = datasets.Dataset.from_dict({"video": raw, "name": ["a", "b"]})
    ds.save_to_disk(os.fspath(tmp_path / "saved"))
    folder = ClipStore(clips_dir, resolution=32)
    saved = ClipStore(tmp_path / "saved", resolution=32)
    assert len(saved) == 2
    np.testing.assert_array_equal(saved.load(1).frames, folder.load(1).frames)
    np.testing.assert_array_equal(saved.load(1).mel, folder.load(1).mel)
    # datasets.Video(decode=False)-style {"bytes", "path"} column, split of a DatasetDict
    rows = datasets.Dataset.from_dict({"clip": [{"bytes": b, "path": None} for b in raw]})
    store = ClipStore(datasets.DatasetDict({"validation": rows}), resolution=32, split="validation",
                      video_column="clip")
    np.testing.assert_array_equal(store.load(0).frames, folder.load(0).frames)
    with pytest.raises(ValueError, match="no column"):
        ClipStore(ds, video_column="mp4")


# ---------------------------------------------------------------------------------------------------- training


def tiny_config(clips_dir, out, **overrides) -> SyncNetTrainingConfig:
    settings = dict(
        model_preset=None, model_config=TINY_MODEL, train_data=os.fspath(clips_dir), output_dir=os.fspath(out),
        train_time_range=[0.0, 0.7], val_time_range=[0.7, 1.0], train_batch_size=4, gradient_accumulation_steps=2,
        max_train_steps=4, checkpointing_steps=2, validation_steps=2, num_val_samples=8, val_batch_size=8,
        learning_rate=1e-3, mixed_precision="no", dataloader_num_workers=0, progress=False, seed=3,
    )
    settings.update(overrides)
    return SyncNetTrainingConfig(**settings)


def test_training_resume_continues_identically(clips_dir, tmp_path):
    straight = train_syncnet(tiny_config(clips_dir, tmp_path / "straight"))
    assert straight["global_step"] == 4
    hist = straight["history"]
    assert hist["train_step"] == [1, 2, 3, 4] and hist["val_step"] == [2, 4]
    assert all(0 <= a <= 1 for a in hist["val_accuracy"])
    checkpoint = tmp_path / "straight" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "training_state.json").is_file()
    assert (tmp_path / "straight" / "loss_chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    resumed = train_syncnet(tiny_config(clips_dir, tmp_path / "resumed", resume_from_checkpoint=os.fspath(checkpoint)))
    assert resumed["global_step"] == 4
    assert resumed["history"] == hist  # same per-step train losses and validation figures
    a = load_file(tmp_path / "straight" / "syncnet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "resumed" / "syncnet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the weights did change during training
    init = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(init[k], a[k]) for k in a)
    # the lowest validation loss (the later one on a tie) is kept with its weights
    best = straight["best"]
    i = max(j for j, v in enumerate(hist["val_loss"]) if v == min(hist["val_loss"]))
    assert (best["step"], best["val_loss"], best["val_accuracy"]) == (
        hist["val_step"][i], hist["val_loss"][i], hist["val_accuracy"][i])
    kept = load_file(os.path.join(best["model_dir"], "diffusion_pytorch_model.safetensors"))
    expected = a if best["step"] == 4 else init
    assert all(torch.equal(kept[k], expected[k]) for k in a)


def test_train_script_cli_and_latest_resume(clips_dir, tmp_path):
    script = runpy.run_path(os.fspath(ROOT / "train" / "train_syncnet.py"), run_name="syncnet_script")
    out = tmp_path / "cli"
    args = ["--config", os.fspath(ROOT / "train" / "configs" / "syncnet_tiny.yaml"), f"train_data={clips_dir}",
            f"output_dir={out}", "checkpointing_steps=1", "validation_steps=2", "num_val_samples=4",
            "train_batch_size=2", "progress=false", "model_config.resolution=32",
            "model_config.visual_block_out_channels=[16, 32, 64, 128, 256]",
            "model_config.visual_downsample_factors=[2, 2, 2, 2, [1, 2]]",
            "model_config.visual_attn_blocks=[0, 0, 0, 0, 0]"]
    assert script["main"](args + ["max_train_steps=2"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["train_step"] == [1, 2]
    assert (out / "syncnet" / "config.json").is_file() and (out / "loss_chart.png").is_file()
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]
    # resume=latest picks checkpoint-2 and trains two more steps
    assert script["main"](args + ["max_train_steps=4", "resume_from_checkpoint=latest"]) == 0
    assert json.loads((out / "history.json").read_text())["train_step"] == [1, 2, 3, 4]


def test_config_loading_and_errors(tmp_path):
    cfg = load_syncnet_config(ROOT / "train" / "configs" / "syncnet_16_pixel.yaml", ["train_data=x", "seed=7"])
    assert cfg.model_preset == "16_pixel" and cfg.train_batch_size == 256 and cfg.seed == 7
    assert load_syncnet_config(ROOT / "train" / "configs" / "syncnet_16_latent.yaml").model_preset == "16_latent"
    # YAML 1.1 reads "1e-4" as a string; numeric settings are converted, model_config entries set one by one
    cfg = load_syncnet_config(ROOT / "train" / "configs" / "syncnet_tiny.yaml",
                              ["learning_rate=1e-4", "model_config.num_frames=5", "max_negative_offset=null"])
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float) and cfg.max_negative_offset is None
    assert cfg.model_config["num_frames"] == 5 and cfg.model_config["resolution"] == 128
    with pytest.raises(ValueError, match="learning_rate must be a number"):
        load_syncnet_config(None, ["learning_rate=fast"])
    with pytest.raises(ValueError, match="unknown config keys"):
        load_syncnet_config(None, ["nope=1"])
    with pytest.raises(ValueError, match="train_data"):
        SyncNetTrainingConfig().validate()
    with pytest.raises(ValueError, match="val_time_range"):
        SyncNetTrainingConfig(train_data="x", val_time_range=[0.5, 0.2]).validate()


def test_latent_space_training(clips_dir, tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        sample_size=32)
    vae.save_pretrained(tmp_path / "vae")
    latent_model = dict(TINY_MODEL, visual_in_channels=64, visual_block_out_channels=[16, 32, 32, 64],
                        visual_downsample_factors=[2, 2, 2, 2], visual_attn_blocks=[0, 0, 0, 0],
                        lower_half=False, latent_space=True)
    result = train_syncnet(tiny_config(clips_dir, tmp_path / "latent", model_config=latent_model,
                                       vae=os.fspath(tmp_path / "vae"), max_train_steps=2, checkpointing_steps=2))
    assert result["global_step"] == 2 and len(result["history"]["val_loss"]) == 1
