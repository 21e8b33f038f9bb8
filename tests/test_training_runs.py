"""Training runs as a researcher meets them (issue 22): configs that say what they are, one-line errors (unreadable
or contradictory settings, empty data, models missing offline without the Hub's retries), run folders (a fresh run
into a used folder refused, overwrite, resume), what a run says at its start, the progress files of both trainers,
exporting any checkpoint, and LoRA adapters that know their base. Tiny models only."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

from latentsync.errors import LatentSyncInputError
from latentsync.training.config import TrainingConfigError, UNetTrainingConfig, load_config, load_syncnet_config

CONFIGS = ROOT / "train" / "configs"


# ---------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny(tiny_training):
    """Tiny stand-ins saved once (U-Net config overrides) and three synthetic aligned 64 px clips."""
    return tiny_training


def unet_cfg(ov: dict, config: str = "unet_tiny_stage1.yaml", **extra):
    items = {**ov, **extra}
    return load_config(CONFIGS / config, [f"{k}={json.dumps(v)}" for k, v in items.items()])


def syncnet_cfg(clips, out, **extra):
    from latentsync.testing import tiny_syncnet_config

    settings = dict(model_preset=None, model_config=tiny_syncnet_config(32), train_data=os.fspath(clips),
                    output_dir=os.fspath(out), train_time_range=[0.0, 0.7], val_time_range=[0.7, 1.0],
                    train_batch_size=2, max_train_steps=2, checkpointing_steps=1, validation_steps=2,
                    num_val_samples=4, val_batch_size=4, mixed_precision="no", dataloader_num_workers=0,
                    progress=False, logging_steps=1)
    settings.update(extra)
    return load_syncnet_config(None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])


class LogText(logging.Handler):
    """Collects the text of every log record of the ``latentsync`` loggers."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger("latentsync")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("latentsync")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def snapshot(folder) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def fail_checkpoint_save(monkeypatch, step: int, error: BaseException):
    """Make ``Accelerator.save_state`` of ``checkpoint-<step>`` stop after its first file with ``error`` (Ctrl-C's
    KeyboardInterrupt, a full disk's OSError), as a save cut short does; other steps save as usual. Returns the
    real ``save_state``, to put back."""
    from accelerate import Accelerator

    real = Accelerator.save_state

    def save_state(self, path, *args, **kwargs):
        if path.endswith(f"checkpoint-{step}"):
            os.makedirs(path, exist_ok=True)
            open(os.path.join(path, "model.safetensors"), "wb").close()
            raise error
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    return real


@pytest.fixture(scope="module")
def stage1_run(tiny):
    """A 3-step tiny stage-1 run (checkpoint every step, an EMA, TensorBoard on, a loss line every step), its log."""
    from latentsync.training.unet_trainer import train

    root, ov = tiny
    cfg = unet_cfg(ov, max_train_steps=3, checkpointing_steps=1, logging_steps=1, use_ema=True, ema_decay=0.5,
                   output_dir=str(root / "stage1"))
    with LogText() as log:
        result = train(cfg)
    reset_accelerate()
    return cfg, result, log.text


@pytest.fixture(scope="module")
def lora_run(tiny):
    """A 2-step LoRA run on the stand-in pipeline's stage-2 U-Net (noise MSE only, for speed)."""
    from latentsync.training.unet_trainer import train

    root, ov = tiny
    cfg = unet_cfg(ov, "unet_tiny.yaml", lora_rank=4, max_train_steps=2, checkpointing_steps=1,
                   sync_loss_weight=0, perceptual_loss_weight=0, trepa_loss_weight=0, output_dir=str(root / "lora"))
    result = train(cfg)
    reset_accelerate()
    return cfg, result


@pytest.fixture(scope="module")
def syncnet_run(tiny, sync_clips_dir):
    from latentsync.training.syncnet_trainer import train_syncnet

    root, _ = tiny
    cfg = syncnet_cfg(sync_clips_dir, root / "syncnet")
    with LogText() as log:
        result = train_syncnet(cfg)
    reset_accelerate()
    return cfg, result, log.text


# ---------------------------------------------------------------------------------------------------- configs
def test_configs_say_what_they_are():
    configs = sorted(CONFIGS.glob("*.yaml"))
    loaded = {p.name: (load_syncnet_config if p.name.startswith("syncnet") else load_config)(p) for p in configs}
    outputs = [c.output_dir for c in loaded.values()]
    assert len(set(outputs)) == len(outputs), "two configs share a default output_dir"
    s1, s2 = loaded["unet_tiny_stage1.yaml"], loaded["unet_tiny_stage2.yaml"]
    assert (s1.stage, s1.motion_modules, s1.trainable_modules, s1.resolution) == (1, "none", None, 64)
    assert (s2.stage, s2.motion_modules, s2.trainable_modules) == (2, "all", ["motion_modules.", "attentions."])
    assert s2.pretrained_unet == os.path.join(s1.output_dir, "pipeline")
    assert s2.syncnet == os.path.join(loaded["syncnet_tiny.yaml"].output_dir, "syncnet_best")  # lowest val loss
    # stage=1 alone implies no temporal layers and every weight trainable; set beside it, they are kept
    implied = load_config(CONFIGS / "unet_stage2.yaml", ["stage=1"])
    assert (implied.motion_modules, implied.trainable_modules) == ("none", None)
    kept = load_config(CONFIGS / "unet_stage2.yaml",
                       ["stage=1", "motion_modules=decoder", "trainable_modules=[attn2.]"])
    assert (kept.motion_modules, kept.trainable_modules) == ("decoder", ["attn2."])
    assert load_config(CONFIGS / "unet_stage1.yaml", ["stage=2"]).motion_modules == "all"
    assert (UNetTrainingConfig(stage=1).motion_modules, UNetTrainingConfig(stage=1).trainable_modules) == ("none", None)
    assert UNetTrainingConfig().trainable_modules == ["motion_modules.", "attentions."]


@pytest.mark.parametrize("contents, overrides, message", [
    ("stage: [1\n", [], "cannot read config .*line 2"),
    ("- a list\n", [], "must hold a mapping"),
    (None, ["nope=1"], "unknown config keys: nope"),
    (None, ["learning_rate=fast"], "learning_rate must be a number"),
    (None, ["resume_from_checkpoint=latest", "overwrite_output_dir=true"], "contradict each other"),
    (None, ["stage=1", "trainable_modules=[motion_modules.]"], "selects only temporal layers"),
    (None, ["max_train_steps=0"], "max_train_steps must be >= 1"),
    (None, ["checkpoints_total_limit=0"], "checkpoints_total_limit must be >= 1"),
    (None, ["report_to=tensorbord"], "report_to must be one of .*tensorboard.* or null"),
    (None, ["unet_config={down_block_type: [a]}"],
     "unet_config: down_block_type is no LatentSyncUNet argument .*did you mean down_block_types"),
    # a value of the wrong type: one line naming the setting (it used to pass silently or end in a traceback)
    (None, ["use_ema=maybe"], "use_ema must be true or false, got 'maybe'"),
    (None, ["train_batch_size=2.5"], "train_batch_size must be a whole number, got 2.5"),
    (None, ["checkpointing_steps=null"], "checkpointing_steps must be a whole number, got null"),
    (None, ["lora_target_modules=to_q"], r"lora_target_modules must be a list of text .*written \[to_q\]"),
    (None, ["learning_rate=[1e-4]"], "learning_rate must be a number, got"),
    ("base: " + str(CONFIGS / "unet_tiny_stage1.yaml") + "\nmixed_precision: no\n", [],
     "mixed_precision must be text, got False .*put the text in quotes"),
    # a config of the other trainer, a key of the other trainer, a misspelt key: what it is, not only which keys
    ("base: " + str(CONFIGS / "syncnet_tiny.yaml") + "\n", [],
     (r"config .*bad.yaml is for train/train_syncnet.py, not train/train_unet.py \(its keys hflip, .*\): run "
      "train/train_syncnet.py with it")),
    (None, ["hflip=true"], r"unknown config keys: hflip \(settings of train/train_syncnet.py, not of "),
    (None, ["lerning_rate=1e-4"], r"unknown config keys: lerning_rate \(did you mean learning_rate\?\)"),
    # KEY.NAME=VALUE on a setting that is no mapping (a TypeError traceback when the config file set it)
    (None, ["learning_rate.x=1"], r"learning_rate.x=1: learning_rate is no mapping .*set it whole"),
])
def test_bad_settings_end_in_one_line(tmp_path, caplog, contents, overrides, message):
    from latentsync.commands.train import train_unet_command

    config = tmp_path / "bad.yaml"
    if contents is not None:
        config.write_text(contents)
    else:
        config = CONFIGS / "unet_tiny_stage1.yaml"
    t0 = time.time()
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        code = train_unet_command(["--config", str(config), "train_data=x", f"output_dir={tmp_path / 'out'}",
                                   *overrides])
    assert code == 2 and time.time() - t0 < 30  # before any model loads (generous: CI machines are busy)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert __import__("re").search(message, errors[0]), errors[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(TrainingConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_values_read_as_their_settings_types(tmp_path):
    """Command-line values as the settings' types: a text setting takes the text as typed (``mixed_precision=no``,
    which YAML reads as false, was refused as "got False", though the usage shows it), numbers that YAML 1.1 reads
    as text convert (``1e3``), and a SyncNet time range that is no list is one line, not a TypeError."""
    cfg = load_config(CONFIGS / "unet_tiny_stage1.yaml", ["mixed_precision=no", "max_train_steps=1e3",
                                                          "hub_model_id=2024", "learning_rate=3e-5"])
    assert (cfg.mixed_precision, cfg.max_train_steps, cfg.hub_model_id, cfg.learning_rate) == ("no", 1000, "2024",
                                                                                                3e-5)
    assert load_config(None, ["report_to=null", "lora_alpha=8"]).report_to is None
    assert load_config(None, ["lora_alpha=8"]).lora_alpha == 8.0
    with pytest.raises(TrainingConfigError, match=r"train_time_range must be a list of numbers \(\[a, b\]\), got 0.8"):
        load_syncnet_config(CONFIGS / "syncnet_tiny.yaml", ["train_time_range=0.8"])
    with pytest.raises(TrainingConfigError, match="hflip must be true or false, got 'maybe'"):
        load_syncnet_config(CONFIGS / "syncnet_tiny.yaml", ["hflip=maybe"])


# ---------------------------------------------------------------------------------------------------- errors
def test_empty_dataset_is_one_line_for_both_trainers(tiny, tmp_path, caplog):
    import datasets

    from latentsync.commands.train import train_syncnet_command, train_unet_command
    from latentsync.data.clips import TrainingDataError
    from latentsync.training.syncnet_trainer import train_syncnet
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    empty = tmp_path / "prepared" / "dataset"
    datasets.Dataset.from_dict({"video": []}, features=datasets.Features({"video": datasets.Value("binary")})
                               ).save_to_disk(str(empty), num_shards=1)  # as earlier versions of prepare wrote it
    (tmp_path / "prepared" / "prepare_config.json").write_text("{}")
    with pytest.raises(TrainingDataError, match=r"holds no clips \(0 rows\).*summary.md"):
        train(unet_cfg(ov, train_data=str(empty), output_dir=str(tmp_path / "u")))
    reset_accelerate()
    with pytest.raises(TrainingDataError, match=r"holds no clips \(0 rows\)"):
        train_syncnet(syncnet_cfg(empty, tmp_path / "s"))
    reset_accelerate()
    # a prepare output folder without its dataset (prepare kept no clip) and a missing folder, through the scripts
    shutil.rmtree(empty)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_syncnet_command(["--config", str(CONFIGS / "syncnet_tiny.yaml"),
                                      f"train_data={tmp_path / 'prepared'}", f"output_dir={tmp_path / 's2'}"]) == 2
        reset_accelerate()
        assert train_unet_command(["--config", str(CONFIGS / "unet_tiny_stage1.yaml"),
                                   f"components_from={ov['components_from']}", f"train_data={tmp_path / 'nowhere'}",
                                   f"output_dir={tmp_path / 'u2'}"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "kept no clip" in errors[0] and f"data not found: train_data={tmp_path / 'nowhere'}" in errors[1]
    assert all("\n" not in e for e in errors)
    assert not any((tmp_path / name).exists() for name in ("u", "s", "s2", "u2"))  # nothing written


MISSING_MODELS = textwrap.dedent("""
    import os, sys, time
    from latentsync.commands.train import train_unet_command
    t0 = time.time()
    code = train_unet_command(["--config", sys.argv[1], "train_data=" + sys.argv[2], "components_from=null",
                               "output_dir=" + sys.argv[3]])
    print("EXIT", code, "SECONDS", round(time.time() - t0, 1))
    # a cached model loads at once afterwards: the process switched to offline mode
    from diffusers import AutoencoderKL
    from latentsync.testing import build_tiny_pipeline
    cache = os.environ["HF_HUB_CACHE"]
    snapshot = os.path.join(cache, "models--org--tinyvae", "snapshots", "a" * 40)
    build_tiny_pipeline().vae.save_pretrained(snapshot)
    os.makedirs(os.path.join(cache, "models--org--tinyvae", "refs"))
    open(os.path.join(cache, "models--org--tinyvae", "refs", "main"), "w").write("a" * 40)
    t0 = time.time()
    AutoencoderKL.from_pretrained("org/tinyvae")
    print("CACHED", round(time.time() - t0, 1), os.environ.get("HF_HUB_OFFLINE"))
""")


def test_models_missing_offline_fail_at_once_naming_them(tiny, tmp_path):
    """With the Hub unreachable (a refused port) and an empty cache: one line naming vae and whisper, saying what to
    do, in seconds rather than the 30 s of Hub retries; cached models then load without retries."""
    _, ov = tiny
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "cache"))
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", MISSING_MODELS, str(CONFIGS / "unet_tiny_stage1.yaml"),
                           ov["train_data"], str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exit_line = next(line for line in done.stdout.splitlines() if line.startswith("EXIT"))
    # well below the 30 s of Hub retries, with room for a loaded machine (no retry is asserted below)
    assert exit_line.startswith("EXIT 2") and float(exit_line.split()[-1]) < 25, exit_line
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "vae=stabilityai/sd-vae-ft-mse" in errors[0] and "whisper=openai/whisper-tiny" in errors[0]
    assert "HF_HUB_OFFLINE=1" in errors[0] and "local folder" in errors[0]
    assert "Retrying" not in done.stderr
    cached = next(line for line in done.stdout.splitlines() if line.startswith("CACHED")).split()
    assert float(cached[1]) < 20 and cached[2] == "1"
    assert not (tmp_path / "out").exists()


def test_check_model_sources(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from latentsync import model_source
    from latentsync.errors import ModelNotFoundError

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    model_source.check_model_sources({"vae": str(tmp_path), "syncnet": None})  # local folders need no Hub
    with pytest.raises(ModelNotFoundError, match=r"not found: pretrained_unet=runs/x/pipeline"):
        model_source.check_model_sources({"pretrained_unet": "runs/x/pipeline"})
    t0 = time.time()
    with pytest.raises(ModelNotFoundError, match=r"Hub is unavailable .*127.0.0.1.*: trepa_model=org/videomae"):
        model_source.check_model_sources({"trepa_model": "org/videomae"})
    assert time.time() - t0 < 5 and constants.HF_HUB_OFFLINE  # switched to offline mode
    assert model_source.is_hub_id("org/name")
    assert not model_source.is_hub_id("./org/name") and not model_source.is_hub_id("a/b/c")


@pytest.fixture
def hub_unreachable(tmp_path, monkeypatch):
    """The Hub cannot be reached (a refused port, not offline mode) and the Hugging Face caches are empty; what the
    offline detection switches is put back afterwards."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load of either trainer fails the test: the errors under test must come before."""
    from latentsync.training import syncnet_trainer, unet_trainer

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(unet_trainer, "load_components", never)
    monkeypatch.setattr(syncnet_trainer, "build_syncnet", never)


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_missing_data_is_one_line_before_any_model_loads(tiny, sync_clips_dir, hub_unreachable, no_model_loads,
                                                         tmp_path, caplog):
    """A data source that is neither a local path nor a cached Hub dataset while the Hub cannot be reached: one line
    naming the setting, exit status 2, in seconds instead of the Hub's retries, before any model loads; a mistyped
    folder says which one was meant."""
    from latentsync.commands.train import train_syncnet_command, train_unet_command

    _, ov = tiny
    runs = [
        (train_unet_command, ["--config", str(CONFIGS / "unet_tiny_stage1.yaml"),
                              f"components_from={ov['components_from']}", "train_data=nothere"],
         "data not found: train_data=nothere is no local file or folder, and no Hub dataset cached on this machine "
         "while the Hub cannot be reached (127.0.0.1 cannot be reached)"),
        (train_syncnet_command, ["--config", str(CONFIGS / "syncnet_tiny.yaml"),
                                 f"train_data={sync_clips_dir.parent / (sync_clips_dir.name + 't')}"],
         f"(no such file or folder; did you mean {sync_clips_dir}?)"),
        (train_syncnet_command, ["--config", str(CONFIGS / "syncnet_tiny.yaml"), f"train_data={sync_clips_dir}",
                                 "val_data=org/held-out"], "data not found: val_data=org/held-out"),
    ]
    for command, argv, message in runs:
        caplog.clear()
        t0 = time.time()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert command([*argv, f"output_dir={tmp_path / 'out'}"]) == 2
        assert time.time() - t0 < 30  # before any model loads (generous: CI machines are busy)
        errors = error_lines(caplog)
        assert len(errors) == 1 and "\n" not in errors[0] and message in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_cached_hub_dataset_offline_loads_from_the_cache(hub_unreachable, tmp_path):
    """A Hub dataset that ``datasets`` built on this machine before is found offline, and the process switches to
    offline mode so that ``datasets`` reads its cached copy without asking the Hub."""
    import datasets
    from huggingface_hub import constants

    from latentsync.data.clips import check_clip_source, is_dataset_cached

    assert not is_dataset_cached("org/talking-faces")
    (tmp_path / "datasets_cache" / "org___talking-faces" / "default" / "0.0.0" / "abc123").mkdir(parents=True)
    assert is_dataset_cached("org/talking-faces")
    check_clip_source("org/talking-faces", "train_data")
    assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("trainer", ["unet", "syncnet"])
def test_hub_settings_offline_are_refused_at_once(tiny, sync_clips_dir, hub_unreachable, no_model_loads, tmp_path,
                                                  caplog, trainer):
    """push_to_hub and resume_from_checkpoint=hub with the Hub unreachable: one line at once (exit status 2), before
    any model loads, instead of a traceback after the Hub's retries (resume) or at the end of the run (push); with a
    local copy of the run, resuming from it is suggested."""
    from latentsync.commands.train import train_syncnet_command, train_unet_command

    _, ov = tiny
    if trainer == "unet":
        command, argv = train_unet_command, ["--config", str(CONFIGS / "unet_tiny_stage1.yaml"),
                                             f"components_from={ov['components_from']}",
                                             f"train_data={ov['train_data']}"]
    else:
        command, argv = train_syncnet_command, ["--config", str(CONFIGS / "syncnet_tiny.yaml"),
                                                f"train_data={sync_clips_dir}"]
    local = tmp_path / "local"
    (local / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    cases = [(["push_to_hub=true", "hub_model_id=me/run", f"output_dir={tmp_path / 'new'}"],
              "push_to_hub=true (uploads to me/run) needs the Hugging Face Hub, which is unavailable (127.0.0.1 "
              "cannot be reached): train with push_to_hub=false"),
             (["resume_from_checkpoint=hub", "hub_model_id=me/run", f"output_dir={tmp_path / 'new'}"],
              "resume_from_checkpoint=hub (the newest checkpoint of me/run) needs the Hugging Face Hub"),
             (["resume_from_checkpoint=hub", "hub_model_id=me/run", f"output_dir={local}"],
              "resume from the copy here with resume_from_checkpoint=latest "
              f"({local / 'checkpoints' / 'checkpoint-4'})")]
    for extra, message in cases:
        caplog.clear()
        t0 = time.time()
        with caplog.at_level(logging.ERROR, logger="latentsync"):
            assert command([*argv, *extra]) == 2
        assert time.time() - t0 < 30  # before any model loads (generous: CI machines are busy)
        errors = error_lines(caplog)
        assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "new").exists()


def test_no_settings_name_config_and_train_data(caplog):
    """``train/train_unet.py`` without arguments names --config and train_data (not a setting that depends on them);
    overrides without --config say that the defaults were used."""
    from latentsync.commands.train import train_unet_command

    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_unet_command([]) == 2
        assert train_unet_command(["max_train_steps=3"]) == 2
    first, second = error_lines(caplog)
    assert "--config" in first and "train_data=DATA" in first
    assert second.startswith("train_data is not set") and "no --config given" in second
    with pytest.raises(TrainingConfigError, match="train_data is not set"):
        UNetTrainingConfig().validate()  # official stage 2: also no syncnet, but train_data comes first


class StopAt:
    """Send ``signum`` to this process once the trainer has logged ``step`` (as Ctrl-C or ``kill`` would)."""

    def __init__(self, monkeypatch, step: int, signum: int):
        from latentsync.training import base

        original = base.TrainingLog.log_train

        def log_train(log, s, values):
            original(log, s, values)
            if s == step:
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(base.TrainingLog, "log_train", log_train)


def test_ctrl_c_and_sigterm_name_the_last_step_and_checkpoint(tiny, sync_clips_dir, tmp_path, monkeypatch, caplog,
                                                              capsys):
    """Ctrl-C (SIGINT) or SIGTERM during training: one line naming the step reached, the last checkpoint and how to
    resume, exit status 130 / 143, no traceback; the checkpoints on disk are those the line names."""
    import signal

    from latentsync.commands.train import train_syncnet_command, train_unet_command

    # what the test process had (default_int_handler, unless an earlier test in this worker left another)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _, ov = tiny
    StopAt(monkeypatch, 3, signal.SIGINT)
    out = tmp_path / "unet"
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        code = train_unet_command(["--config", str(CONFIGS / "unet_tiny_stage1.yaml"),
                                   f"components_from={ov['components_from']}", f"train_data={ov['train_data']}",
                                   "max_train_steps=6", "checkpointing_steps=2", "validation_video=null",
                                   "validation_audio=null", f"output_dir={out}"])
    assert code == 130
    assert error_lines(caplog) == [
        f"stopped by Ctrl-C after step 3 of 6; the last checkpoint is checkpoint-2 in {out / 'checkpoints'}: resume "
        "with resume_from_checkpoint=latest (step 3 is trained again)"]
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-2"] and not (out / "pipeline").exists()
    reset_accelerate()
    caplog.clear()
    StopAt(monkeypatch, 1, signal.SIGTERM)
    out = tmp_path / "syncnet"
    settings = ["model_preset=null", f"train_data={sync_clips_dir}",
                "train_batch_size=2", "max_train_steps=4", "checkpointing_steps=2", "num_val_samples=4",
                "val_batch_size=4", "progress=false", f"output_dir={out}"]
    from latentsync.testing import tiny_syncnet_config

    settings += [f"model_config={json.dumps(tiny_syncnet_config(32))}"]
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_syncnet_command(["--config", str(CONFIGS / "syncnet_tiny.yaml"), *settings]) == 143
    assert error_lines(caplog) == [
        "stopped by SIGTERM after step 1 of 4; no checkpoint was saved yet (the first at step 2): run the same "
        f"command again with overwrite_output_dir=true ({out} holds the stopped run)"]
    assert "Traceback" not in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back


def test_interrupt_behind_a_library_error_is_still_a_stop():
    """A signal that arrives inside a library call whose cleanup then fails (accelerate's ``load`` raises
    ``UnboundLocalError`` from its ``finally``) is still recognised as the stop it is."""
    import signal

    from latentsync.errors import RunInterrupted
    from latentsync.training.base import interrupt_of, signal_number

    try:
        try:
            raise RunInterrupted(signal.SIGTERM)
        finally:
            raise UnboundLocalError("cannot access local variable 'old_safe_globals'")
    except UnboundLocalError as exc:
        found = interrupt_of(exc)
    assert isinstance(found, RunInterrupted) and signal_number(found) == signal.SIGTERM
    assert interrupt_of(ValueError("x")) is None and signal_number(KeyboardInterrupt()) == signal.SIGINT


# ---------------------------------------------------------------------------------------------------- a run's start
def test_stage1_run_says_what_it_trains_and_logs_progress(stage1_run):
    cfg, result, log = stage1_run
    out = cfg.output_dir
    assert "data: 3 clips" in log and "faces: 64 x 64 px" in log and "resized" not in log.split("faces:")[1][:40]
    assert "U-Net stage 1, temporal layers: none" in log
    assert "ResNet blocks (resnets.)" in log and "100.0 %" in log and "temporal layers (motion_modules.)" not in log
    assert "frozen: VAE" in log and "audio encoder" in log and "losses: recon x 1" in log
    assert "steps 0 -> 3" in log and f"output: {out}/" in log
    assert all(f"step {s}/3: loss" in log for s in (1, 2, 3))
    history = json.load(open(os.path.join(out, "history.json")))
    assert history["train_step"] == [1, 2, 3] and len(history["train_recon"]) == 3
    assert open(os.path.join(out, "loss_chart.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(os.path.join(out, "logs")) for f in fs)
    with open(os.path.join(out, "checkpoints", "checkpoint-2", "training_state.json")) as fh:
        assert json.load(fh)["history"]["train_step"] == [1, 2]


def test_syncnet_run_says_what_it_trains_and_logs_progress(syncnet_run):
    cfg, result, log = syncnet_run
    assert "faces: 64 x 64 px, resized to 32 x 32 px, lower half kept (16 x 32 px)" in log
    assert "audio encoder" in log and "visual encoder" in log and "frozen: none" in log
    assert "step 1/2: loss" in log and "step 2: validation loss" in log and "positive_accuracy" in log
    history = json.load(open(os.path.join(cfg.output_dir, "history.json")))
    assert history["train_step"] == [1, 2] and {"val_positive_accuracy", "val_negative_accuracy"} <= set(history)


# ---------------------------------------------------------------------------------------------------- run folders
def test_fresh_run_into_a_used_folder_is_refused(tiny, stage1_run, syncnet_run):
    from latentsync.training.syncnet_trainer import train_syncnet
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    cfg = stage1_run[0]
    before = snapshot(cfg.output_dir)
    t0 = time.time()
    with pytest.raises(TrainingConfigError, match="already holds a run: continue it with resume_from_checkpoint"):
        train(unet_cfg(ov, max_train_steps=3, output_dir=cfg.output_dir))
    assert time.time() - t0 < 5  # refused before any model loads
    assert snapshot(cfg.output_dir) == before
    with pytest.raises(TrainingConfigError, match="already holds a run"):
        train_syncnet(syncnet_run[0])


def test_overwrite_and_latest_without_checkpoint_start_clean(tiny, stage1_run, tmp_path):
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    used = tmp_path / "used"
    shutil.copytree(stage1_run[0].output_dir, used)
    train(unet_cfg(ov, max_train_steps=1, overwrite_output_dir=True, output_dir=str(used)))
    reset_accelerate()
    assert [json.loads(line)["step"] for line in open(used / "losses.jsonl")] == [1]
    assert os.listdir(used / "checkpoints") == ["checkpoint-1"]
    # "latest" in a folder whose run died before its first checkpoint: a fresh start, no duplicated steps
    shutil.rmtree(used / "checkpoints")
    train(unet_cfg(ov, max_train_steps=1, resume_from_checkpoint="latest", output_dir=str(used)))
    reset_accelerate()
    assert [json.loads(line)["step"] for line in open(used / "losses.jsonl")] == [1]
    assert json.load(open(used / "history.json"))["train_step"] == [1]
    # a folder that holds something else is never deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TrainingConfigError, match="holds no training run"):
        train(unet_cfg(ov, overwrite_output_dir=True, output_dir=str(other)))
    assert (other / "notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_what_the_run_reads(tiny, stage1_run, tmp_path):
    """overwrite_output_dir deletes the old run; anything the new run reads that lies inside it (its starting
    U-Net, e.g. a LoRA fine-tune of the run's own pipeline, or a validation clip) is refused first. Only train_data
    was checked before: the starting pipeline was deleted, then failed to load."""
    from latentsync.training.base import check_output_dir

    _, ov = tiny
    used = tmp_path / "used"
    shutil.copytree(stage1_run[0].output_dir, used)
    (used / "clip.mp4").write_bytes(b"a validation clip kept in the run folder")
    before = snapshot(str(used))
    cases = [({"pretrained_unet": str(used / "pipeline"), "lora_rank": 4}, "pretrained_unet"),
             ({"validation_video": str(used / "clip.mp4")}, "validation_video")]
    for extra, name in cases:
        cfg = unet_cfg(ov, overwrite_output_dir=True, output_dir=str(used), **extra)
        with pytest.raises(TrainingConfigError, match=f"{name} .* is inside output_dir .*overwrite_output_dir would "
                                                      "delete"):
            check_output_dir(cfg)
    assert snapshot(str(used)) == before
    check_output_dir(unet_cfg(ov, overwrite_output_dir=True, output_dir=str(used)))  # nothing of it is read


def test_run_folder_as_model_is_one_line(stage1_run, example_face, example_speech, caplog):
    from latentsync import LatentSyncPipeline
    from latentsync.commands import main

    out = stage1_run[0].output_dir
    with pytest.raises(LatentSyncInputError, match=f"training run folder.*{out}/pipeline.*export-checkpoint"):
        LatentSyncPipeline.from_pretrained(out)
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["--model", out, "--video", str(example_face), "--audio", str(example_speech),
                     "--output", os.path.join(out, "..", "never.mp4")]) == 2
    assert "training run folder" in caplog.records[-1].getMessage()


def test_syncnet_run_folder_as_model_says_what_it_is(tmp_path, example_face, example_speech, caplog):
    """A SyncNet run given as the pipeline: it is a SyncNet (for --syncnet and evaluation), not something
    ``export-checkpoint`` turns into a pipeline."""
    from latentsync.commands import main

    run = tmp_path / "syncnet_tiny"
    for folder in ("checkpoints/checkpoint-2", "syncnet", "syncnet_best"):
        (run / folder).mkdir(parents=True)
    (run / "config.yaml").write_text("train_data: x\n")
    (run / "losses.jsonl").write_text("")
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert main(["--model", str(run), "--video", str(example_face), "--audio", str(example_speech),
                     "--output", str(tmp_path / "never.mp4")]) == 2
    message = caplog.records[-1].getMessage()
    assert f"{run} is a SyncNet training run, not a lip-sync pipeline" in message
    assert "--syncnet" in message and f"eval syncnet-acc --model {run / 'syncnet_best'}" in message
    assert "export-checkpoint" not in message


# ---------------------------------------------------------------------------------------------------- export
def test_export_any_checkpoint_without_touching_the_run(stage1_run, tmp_path):
    from latentsync import LatentSyncPipeline
    from latentsync.training.export import ExportError, export_checkpoint

    cfg, result, _ = stage1_run
    run = cfg.output_dir
    before = snapshot(run)
    final = export_checkpoint(run, str(tmp_path / "step3"), step=3)
    assert final["step"] == 3 and final["pipeline"] == str(tmp_path / "step3")
    assert final["ema"]  # the run kept an EMA: its weights, as in the run's pipeline/
    ours = load_file(tmp_path / "step3" / "unet" / "diffusion_pytorch_model.safetensors")
    saved = load_file(os.path.join(result["pipeline"], "unet", "diffusion_pytorch_model.safetensors"))
    assert ours.keys() == saved.keys() and all(torch.equal(ours[k], saved[k]) for k in ours)  # the run's own result
    raw = export_checkpoint(run, str(tmp_path / "step3_raw"), step=3, use_ema=False)
    raw_weights = load_file(os.path.join(raw["pipeline"], "unet", "diffusion_pytorch_model.safetensors"))
    assert not raw["ema"] and any(not torch.equal(raw_weights[k], saved[k]) for k in saved)
    first = export_checkpoint(run, str(tmp_path / "step1"), step=1)
    pipe = LatentSyncPipeline.from_pretrained(first["pipeline"])
    assert pipe.unet.config.motion_modules == "none"
    step1 = pipe.unet.state_dict()
    assert any(not torch.equal(step1[k], saved[k]) for k in saved)
    assert snapshot(run) == before  # the run is only read
    with pytest.raises(ExportError, match="no checkpoint of step 7; its checkpoints are at steps 1, 2, 3"):
        export_checkpoint(run, str(tmp_path / "x"), step=7)
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(run, str(tmp_path / "step1"), step=1)
    with pytest.raises(ExportError, match="is inside the input .*: choose a folder outside it"):
        export_checkpoint(run, os.path.join(run, "exported"))
    # a folder that holds the run is refused even with overwrite (replacing it would delete the run)
    with pytest.raises(ExportError, match="holds the input .*delete the input"):
        export_checkpoint(run, os.path.dirname(run), step=1, overwrite=True)
    assert not (tmp_path / "x").exists() and not os.path.exists(os.path.join(run, "exported"))
    assert snapshot(run) == before


def test_both_trainers_keep_their_settings_as_yaml_and_old_json_runs_still_work(stage1_run, syncnet_run, tmp_path):
    """Both trainers keep their settings in config.yaml, which reloads as --config to the same settings (U-Net runs
    wrote config.json, which diffusers' loaders took for a model's config). A U-Net run of an earlier version
    (config.json) still exports, is still told apart from a SyncNet run, and has its settings file replaced when it
    resumes; a SyncNet run stopped before it saved a model is told apart by its settings."""
    import dataclasses

    from latentsync.model_source import check_not_training_run
    from latentsync.training.export import export_checkpoint
    from latentsync.training.unet_trainer import train

    for (cfg, *_), load in ((stage1_run, load_config), (syncnet_run, load_syncnet_config)):
        assert os.listdir(cfg.output_dir).count("config.yaml") == 1
        assert "config.json" not in os.listdir(cfg.output_dir)
        assert load(os.path.join(cfg.output_dir, "config.yaml")) == cfg
    cfg = stage1_run[0]
    old = tmp_path / "old_unet_run"
    shutil.copytree(cfg.output_dir, old)
    (old / "config.yaml").unlink()
    (old / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))  # as earlier versions wrote it
    assert export_checkpoint(str(old), str(tmp_path / "exported"), step=2)["kind"] == "unet"
    with pytest.raises(LatentSyncInputError, match="is a training run folder, not a pipeline"):
        check_not_training_run(old)
    train(dataclasses.replace(cfg, output_dir=str(old), resume_from_checkpoint="latest", max_train_steps=4))
    reset_accelerate()
    assert (old / "config.yaml").is_file() and not (old / "config.json").exists()
    early = tmp_path / "early_syncnet_run"
    (early / "checkpoints").mkdir(parents=True)
    shutil.copy(os.path.join(syncnet_run[0].output_dir, "config.yaml"), early)
    with pytest.raises(LatentSyncInputError, match="is a SyncNet training run, not a lip-sync pipeline"):
        check_not_training_run(early)


def test_run_with_relative_paths_exports_from_any_folder(tiny, stage1_run, tmp_path, monkeypatch):
    """A run started with relative model paths (as the walkthrough's `components_from: tiny-models/pipeline`) used
    to keep them as given in its config.yaml, so `export-checkpoint` from another working directory failed with
    `not found: components_from=...`. Now config.yaml holds the local paths absolute (Hub ids as they are, and it
    still reloads with --config), and the runs of earlier versions, whose paths are relative, are read from the
    folder they were started in (their run folder's path without their output_dir)."""
    from latentsync.commands import main
    from latentsync.training.unet_trainer import train

    root, ov = tiny
    monkeypatch.chdir(root)  # the run is started here, with every path relative to it
    relative = {key: os.path.relpath(ov[key], root) for key in ("components_from", "train_data")}
    cfg = unet_cfg({**ov, **relative}, max_train_steps=1, checkpointing_steps=1, report_to=None,
                   output_dir="relative_run", vae="stabilityai/sd-vae-ft-mse")
    train(cfg)
    reset_accelerate()
    saved = load_config(str(root / "relative_run" / "config.yaml"))
    assert saved.components_from == ov["components_from"] and saved.train_data == ov["train_data"]
    assert saved.output_dir == str(root / "relative_run") and saved.vae == "stabilityai/sd-vae-ft-mse"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["export-checkpoint", str(root / "relative_run"), "exported"]) == 0
    assert (elsewhere / "exported" / "model_index.json").is_file()
    # a run of an earlier version: relative paths in its config.yaml, its folder reached by any path
    old = root / "old_run"
    shutil.copytree(stage1_run[0].output_dir, old)
    old_settings = {**stage1_run[0].to_dict(), **relative, "output_dir": "old_run"}
    (old / "config.yaml").write_text(json.dumps(old_settings))  # JSON is YAML
    assert main(["export-checkpoint", os.path.relpath(old), "exported_old", "--step", "2"]) == 0
    assert (elsewhere / "exported_old" / "model_index.json").is_file()


def test_export_command_syncnet_and_lora(syncnet_run, lora_run, tmp_path, capsys):
    from latentsync.commands import main
    from latentsync.loaders.lora import read_lora_record
    from latentsync.models import StableSyncNet

    cfg = syncnet_run[0]
    assert main(["export-checkpoint", cfg.output_dir, "--step", "2", str(tmp_path / "sn")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kind"] == "syncnet"
    ours = StableSyncNet.from_pretrained(tmp_path / "sn").state_dict()
    final = StableSyncNet.from_pretrained(syncnet_run[1]["model_dir"]).state_dict()
    assert all(torch.equal(ours[k], final[k]) for k in final)
    lora_cfg, lora_result = lora_run
    assert main(["export-checkpoint", lora_cfg.output_dir, str(tmp_path / "lora_export")]) == 0
    assert read_lora_record(str(tmp_path / "lora_export" / "lora")) == read_lora_record(lora_result["lora"])
    merged = load_file(tmp_path / "lora_export" / "unet" / "diffusion_pytorch_model.safetensors")
    saved = load_file(os.path.join(lora_result["pipeline"], "unet", "diffusion_pytorch_model.safetensors"))
    assert all(torch.allclose(merged[k], saved[k]) for k in saved)


# ---------------------------------------------------------------------------------------------------- LoRA base
def test_lora_adapter_knows_its_base(tiny, lora_run, stage1_run, caplog):
    from latentsync import LatentSyncPipeline
    from latentsync.loaders.lora import LoRABaseMismatchError, base_weights_sha256, read_lora_record

    _, ov = tiny
    _, result = lora_run
    adapter = result["lora"]
    record = read_lora_record(adapter)
    pipe = LatentSyncPipeline.from_pretrained(ov["components_from"])
    assert record["base_model"]["source"] == ov["components_from"]
    assert record["base_model"]["weights_sha256"] == base_weights_sha256(pipe.unet)
    assert record["lora"]["rank"] == 4 and record["trained_steps"] == 2
    # the right base: no warning, and the result is the run's merged pipeline
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        pipe.load_lora_weights(adapter)
    assert "LoRA" not in caplog.text
    merged = LatentSyncPipeline.from_pretrained(result["pipeline"]).unet
    x, ctx = torch.randn(1, 13, 16, 8, 8), torch.randn(16, 30, 64)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, 5, ctx).sample, merged(x, 5, ctx).sample, rtol=1e-4, atol=1e-4)
    # another architecture (the stage-1 U-Net has no temporal layers): refused, nothing loaded
    stage1 = LatentSyncPipeline.from_pretrained(stage1_run[1]["pipeline"])
    with pytest.raises(LoRABaseMismatchError, match=r"trained on another U-Net.*motion_modules"):
        stage1.load_lora_weights(adapter)
    assert not any("lora_" in n for n, _ in stage1.unet.named_parameters())
    # same architecture, other weights: a loud warning, refused with strict_base=True
    other = LatentSyncPipeline.from_pretrained(ov["components_from"])
    with torch.no_grad():
        other.unet.conv_in.weight.add_(1.0)
    with pytest.raises(LoRABaseMismatchError, match="other weights"):
        other.load_lora_weights(adapter, strict_base=True)
    assert not any("lora_" in n for n, _ in other.unet.named_parameters())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentsync"):
        other.load_lora_weights(adapter)
    assert "trained on other weights of this architecture" in caplog.text


def test_lora_notebook_on_a_gpu_trains_on_the_release_it_loads_onto(tiny, tmp_path):
    """examples/03_finetune_lora.ipynb's GPU settings (its cell run with TINY false; the tiny pipeline stands in for
    the converted release, 64 px, one step): the adapter trains on the release's own U-Net and loads onto it. The
    settings used to keep unet_stage2_efficient.yaml's starting point (pretrained_unet=outputs/unet_stage1/pipeline,
    "not found") and its decoder-only temporal layers (an adapter for another U-Net than the release)."""
    import ast

    from latentsync import LatentSyncPipeline
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    notebook = json.loads((ROOT / "examples" / "03_finetune_lora.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"]
                if c["cell_type"] == "code" and "lora_rank" in "".join(c["source"]))
    branch = next(node for node in ast.parse(cell).body
                  if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TINY")

    def latentsync(*args):  # `latentsync convert --official ... --output BASE`: the tiny pipeline as the release
        shutil.copytree(ov["components_from"], args[-1])

    names = {"WORK": tmp_path, "REPO": ROOT, "Path": __import__("pathlib").Path, "json": json,
             "latentsync": latentsync}
    exec(compile(ast.Module(branch.orelse, type_ignores=[]), "03_finetune_lora.ipynb", "exec"), names)
    settings = {**names["settings"], "resolution": 64, "max_train_steps": 1, "gradient_checkpointing": False,
                "train_data": ov["train_data"], "output_dir": str(tmp_path / "run"), "dataloader_num_workers": 0}
    train(load_config(names["config"], [f"{k}={json.dumps(v)}" for k, v in settings.items()]))
    reset_accelerate()
    pipe = LatentSyncPipeline.from_pretrained(names["BASE"])
    pipe.load_lora_weights(tmp_path / "run" / "lora")  # LoRABaseMismatchError for another architecture
    assert pipe.unet.peft_config


def test_lora_adapter_without_record_onto_wrong_architecture(lora_run, stage1_run, tmp_path, caplog):
    from latentsync import LatentSyncPipeline
    from latentsync.loaders.lora import LORA_WEIGHTS_FILE, LoRABaseMismatchError

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(lora_run[1]["lora"], LORA_WEIGHTS_FILE), bare / LORA_WEIGHTS_FILE)
    stage1 = LatentSyncPipeline.from_pretrained(stage1_run[1]["pipeline"])
    with caplog.at_level(logging.WARNING, logger="latentsync"), pytest.raises(
            LoRABaseMismatchError, match=r"adapts \d+ of its \d+ modules that this U-Net does not have"):
        stage1.load_lora_weights(bare)
    assert "has no record of its base model" in caplog.text


# ---------------------------------------------------------------------------------------------------- resume
def loss_rows(folder) -> list[dict]:
    with open(os.path.join(folder, "losses.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def test_gradient_accumulation_resumes_at_the_data_of_an_uninterrupted_run(tiny, tmp_path):
    """3 clips, batch 1, accumulation 2: a step's batches cross the end of an epoch. A run resumed at step 2 trains
    step 3 on the batches an uninterrupted run does (accelerate used to end a step early at an epoch's end, so the
    data position was not step x accumulation and the resumed run skipped a batch), and every logged step loss is
    the mean of 2 batches (that short step logged half its loss)."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    settings = dict(gradient_accumulation_steps=2, checkpointing_steps=2, report_to=None)
    train(unet_cfg(ov, max_train_steps=3, output_dir=str(tmp_path / "full"), **settings))
    reset_accelerate()
    train(unet_cfg(ov, max_train_steps=2, output_dir=str(tmp_path / "resumed"), **settings))
    reset_accelerate()
    train(unet_cfg(ov, max_train_steps=3, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest",
                   **settings))
    reset_accelerate()
    full, resumed = loss_rows(tmp_path / "full"), loss_rows(tmp_path / "resumed")
    assert [r["step"] for r in full] == [r["step"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    assert min(r["loss"] for r in full) > 0.8  # no step logged half its loss (the tiny U-Net's noise MSE is ~1)


def test_resume_point_is_checked_before_any_model_loads(tiny, stage1_run, tmp_path, no_model_loads):
    """A checkpoint the run cannot continue from is one line before anything loads, and the run folder is not
    touched: a step beyond max_train_steps, checkpoints of a later step (resuming from an earlier checkpoint would
    overwrite them one by one, rotation deleted the new ones and kept those, and ``latest`` picked them), settings
    that shape the saved state (here the EMA; it used to fail in accelerate after the models loaded)."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    used = tmp_path / "used"
    shutil.copytree(stage1_run[0].output_dir, used)
    before = snapshot(used)
    cases = [
        (dict(resume_from_checkpoint="latest", max_train_steps=2),
         "checkpoint-3 is at step 3, beyond max_train_steps=2"),
        (dict(resume_from_checkpoint=str(used / "checkpoints" / "checkpoint-1"), checkpoints_total_limit=1,
              max_train_steps=3), r"holds checkpoints after step 1 \(checkpoint-2, checkpoint-3\)"),
        (dict(resume_from_checkpoint="latest", use_ema=False, max_train_steps=4),
         r"checkpoint-3 was saved with use_ema=true \(now false\)"),
        (dict(resume_from_checkpoint=str(used), max_train_steps=4),  # the run folder, not one of its checkpoints
         f"resume_from_checkpoint={used} is not a checkpoint folder .*its newest checkpoint is "
         f"{used / 'checkpoints' / 'checkpoint-3'}"),
    ]
    for extra, message in cases:
        with pytest.raises(TrainingConfigError, match=message):
            train(unet_cfg(ov, output_dir=str(used), ema_decay=0.5, **extra))
        reset_accelerate()
    assert snapshot(used) == before


def test_resume_warns_of_ignored_settings_and_survives_a_cut_log_line(tiny, stage1_run, tmp_path):
    """An Adam setting changed on resume is not used (the checkpoint's optimiser state holds it): a warning says so.
    A last line of losses.jsonl cut short (a full disk, a kill while writing) is dropped instead of ending the
    resume in a JSON traceback."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    used = tmp_path / "used"
    shutil.copytree(stage1_run[0].output_dir, used)
    with open(used / "losses.jsonl", "a") as fh:
        fh.write('{"step": 4, "rec')
    with LogText() as log:
        train(unet_cfg(ov, output_dir=str(used), resume_from_checkpoint="latest", max_train_steps=4, use_ema=True,
                       ema_decay=0.5, adam_weight_decay=0.5, checkpointing_steps=1))
    reset_accelerate()
    assert "not used when resuming: adam_weight_decay=0.5 (the checkpoint's: 0.01)" in log.text
    assert [r["step"] for r in loss_rows(used)] == [1, 2, 3, 4]
    assert all(r["lr"] == 1e-4 for r in loss_rows(used))


def test_resume_with_another_lr_schedule_is_refused_unless_asked_for(tiny, tmp_path, monkeypatch):
    """A run resumed with another learning-rate schedule used to combine the checkpoint's state (step count, peak
    rate) with the new settings silently: a linear schedule over 2 steps resumed with max_train_steps=4 trained
    step 3 at the old schedule's rate (0), then jumped to the new schedule at the old peak rate, and a new
    learning_rate was only warned about. Now it is one line naming the changed settings and the rates, before
    anything is written, and change_lr_schedule=true follows the new schedule (its peak rate included) from the
    checkpoint's step on, with a warning saying so. (A longer run on a constant schedule resumes as before: see the
    gradient-accumulation test.)"""
    from latentsync.training import base
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    out = tmp_path / "run"
    settings = {"lr_scheduler": "linear", "checkpointing_steps": 1, "report_to": None, "output_dir": str(out)}
    train(unet_cfg(ov, max_train_steps=2, **settings))
    reset_accelerate()
    before = snapshot(out)
    with pytest.raises(TrainingConfigError) as refused:
        train(unet_cfg(ov, max_train_steps=4, resume_from_checkpoint="latest", **settings))
    reset_accelerate()
    assert str(refused.value) == (
        "checkpoint-2 was saved with another learning-rate schedule (max_train_steps 2 -> 4), which changes the "
        "learning rate of the steps still to train (step 3: 5e-05 instead of 0): resume with the settings it was "
        "saved with (in its run_config.json), or add change_lr_schedule=true to go on with the new schedule from "
        "step 3")
    assert snapshot(out) == before
    used = []  # the rate each optimisation step trains with
    real_step = base.optimizer_step

    def recording_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm):
        if accelerator.sync_gradients:
            used.append(optimizer.param_groups[0]["lr"])
        real_step(accelerator, loss, params, optimizer, lr_scheduler, max_grad_norm)

    monkeypatch.setattr(base, "optimizer_step", recording_step)
    with LogText() as log:
        train(unet_cfg(ov, max_train_steps=4, learning_rate=2e-4, change_lr_schedule=True,
                       resume_from_checkpoint="latest", **settings))
    reset_accelerate()
    assert ("resuming from checkpoint-2 with a changed learning-rate schedule (change_lr_schedule=true): "
            "learning_rate 0.0001 -> 0.0002, max_train_steps 2 -> 4; the run follows the new schedule from step 3 "
            "on (step 3: 0.0001 instead of 0)") in log.text
    assert used == pytest.approx([2e-4 * 2 / 4, 2e-4 * 1 / 4])  # linear over 4 steps from a peak of 2e-4
    assert [r["lr"] for r in loss_rows(out)] == pytest.approx([1e-4 / 2, 0, 2e-4 / 4, 0])


def test_checkpoint_of_other_settings_without_their_record_is_one_line(tiny, stage1_run, tmp_path):
    """A checkpoint of an earlier version (no record of its settings) whose state does not fit the run's model:
    one line instead of accelerate's traceback."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    used = tmp_path / "used"
    shutil.copytree(stage1_run[0].output_dir, used)
    for checkpoint in (used / "checkpoints").iterdir():
        if (checkpoint / "run_config.json").exists():
            (checkpoint / "run_config.json").unlink()
    with pytest.raises(TrainingConfigError, match="cannot resume from .*checkpoint-3: its saved state does not fit"):
        train(unet_cfg(ov, output_dir=str(used), resume_from_checkpoint="latest", max_train_steps=4, use_ema=False))
    reset_accelerate()


def test_rotation_never_deletes_the_checkpoint_it_saved(tmp_path):
    """checkpoints_total_limit keeps the newest checkpoints up to the one just saved; one of a later step (left by
    another run) neither counts nor pushes the new one out."""
    from types import SimpleNamespace

    from latentsync.training import base
    from latentsync.training.config import SyncNetTrainingConfig

    root = tmp_path / "checkpoints"
    for step in (1, 2, 9):
        (root / f"checkpoint-{step}").mkdir(parents=True)
    acc = SimpleNamespace(is_main_process=True, num_processes=1, wait_for_everyone=lambda: None,
                          save_state=lambda path: os.makedirs(path))
    cfg = SyncNetTrainingConfig(train_data="x", output_dir=str(tmp_path), checkpoints_total_limit=2)
    base.save_checkpoint(acc, cfg, 3)
    assert sorted(os.listdir(root)) == ["checkpoint-2", "checkpoint-3", "checkpoint-9"]


def test_ctrl_c_while_a_checkpoint_is_written_or_removed_leaves_none_half_done(tiny, tmp_path, monkeypatch,
                                                                                   caplog):
    """Ctrl-C while the first checkpoint is written: the run stops saying that no checkpoint was saved, the
    half-written folder is removed (it used to stay, hidden, until the next save), and resuming with `latest` starts
    from scratch instead of taking it. Ctrl-C while the rotation deletes an old checkpoint: no half-deleted
    `checkpoint-<step>` is left for `latest` or an export to take (it was deleted in place)."""
    from types import SimpleNamespace

    from accelerate import Accelerator

    from latentsync.commands.train import train_unet_command
    from latentsync.training import base
    from latentsync.training.config import SyncNetTrainingConfig

    _, ov = tiny
    real = fail_checkpoint_save(monkeypatch, 1, KeyboardInterrupt())
    out = tmp_path / "run"
    args = ["--config", str(CONFIGS / "unet_tiny_stage1.yaml"), f"components_from={ov['components_from']}",
            f"train_data={ov['train_data']}", "max_train_steps=2", "checkpointing_steps=1", "report_to=null",
            f"output_dir={out}"]
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_unet_command(args) == 130
    reset_accelerate()
    assert error_lines(caplog)[-1].startswith("stopped by Ctrl-C after step 1 of 2; no checkpoint was saved yet")
    assert os.listdir(out / "checkpoints") == []
    monkeypatch.setattr(Accelerator, "save_state", real)
    with LogText() as log:
        assert train_unet_command([*args, "resume_from_checkpoint=latest"]) == 0
    reset_accelerate()
    assert f"no checkpoint in {out}: starting from scratch" in log.text
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-1", "checkpoint-2"]

    root = tmp_path / "rotated" / "checkpoints"
    for step in (1, 2):
        for name in ("model.safetensors", "optimizer.bin"):
            (root / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
            (root / f"checkpoint-{step}" / name).write_text("x")
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *a, **k):  # Ctrl-C after the first file is deleted
        os.remove(os.path.join(path, min(os.listdir(path))))
        raise KeyboardInterrupt

    acc = SimpleNamespace(is_main_process=True, num_processes=1, wait_for_everyone=lambda: None,
                          save_state=lambda path: os.makedirs(path))
    cfg = SyncNetTrainingConfig(train_data="x", output_dir=str(tmp_path / "rotated"), checkpoints_total_limit=2)
    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        base.save_checkpoint(acc, cfg, 3)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [os.path.basename(c) for c in base.list_checkpoints(cfg.output_dir)] == ["checkpoint-2", "checkpoint-3"]
    assert sorted(os.listdir(root / "checkpoint-2")) == ["model.safetensors", "optimizer.bin"]


# ---------------------------------------------------------------------------------------------------- run folder
def test_output_dir_that_cannot_be_written_is_one_line_before_models_load(tiny, tmp_path, no_model_loads):
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(TrainingConfigError, match=f"cannot create output_dir .*: {tmp_path / 'a_file'} is a file"):
        train(unet_cfg(ov, output_dir=str(tmp_path / "a_file" / "run")))
    reset_accelerate()
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc: no folder that even root cannot write")
    with pytest.raises(TrainingConfigError,
                       match="cannot write output_dir /proc/latentsync-run: /proc is not writable"):
        train(unet_cfg(ov, output_dir="/proc/latentsync-run"))
    reset_accelerate()


def test_missing_validation_clip_is_one_line_before_models_load(tiny, tmp_path, no_model_loads, example_speech):
    """A validation_video that does not exist: refused at once (every validation used to fail with a warning, and the
    run ended without any validation video)."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    with pytest.raises(TrainingConfigError, match=f"validation_video file not found: {tmp_path / 'face.mp4'}"):
        train(unet_cfg(ov, output_dir=str(tmp_path / "run"), validation_video=str(tmp_path / "face.mp4"),
                       validation_audio=str(example_speech)))
    reset_accelerate()
    assert not (tmp_path / "run").exists()


def test_second_run_into_a_folder_in_use_is_refused(tiny, tmp_path, no_model_loads, monkeypatch):
    """A run holds its output_dir (a lock): a second one started meanwhile (here: resuming it, which a used folder
    allows) is refused at once instead of writing its steps and checkpoints among the first one's."""
    import fcntl

    from latentsync.training.unet_trainer import train

    _, ov = tiny
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running trainer holds it
        with pytest.raises(TrainingConfigError, match="is in use by another training run right now"):
            train(unet_cfg(ov, output_dir=str(out), resume_from_checkpoint="latest"))
        reset_accelerate()
    finally:
        os.close(fd)
    assert os.listdir(out) == []
    with pytest.raises(AssertionError, match="a model was loaded"):  # free again: the run goes on to its models
        train(unet_cfg(ov, output_dir=str(tmp_path / "new")))
    reset_accelerate()
    assert not (tmp_path / "new").exists()  # the folder the failed run made is removed again
    # where there is no flock (Windows), a run takes no lock and goes on
    from latentsync import tempfiles

    monkeypatch.setattr(tempfiles, "fcntl", None)
    with pytest.raises(AssertionError, match="a model was loaded"):
        train(unet_cfg(ov, output_dir=str(tmp_path / "windows")))
    reset_accelerate()


def test_full_disk_while_saving_is_one_line_naming_the_last_checkpoint(tiny, tmp_path, monkeypatch, caplog):
    """The disk fills up while checkpoint-2 is written: one line (what, why, the free space, the checkpoint to
    resume from), exit status 1, no half-written checkpoint left; the same when the final pipeline cannot be
    written."""
    import errno

    from accelerate import Accelerator

    from latentsync.commands.train import train_unet_command
    from latentsync.training import unet_trainer

    _, ov = tiny
    real = fail_checkpoint_save(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    args = ["--config", str(CONFIGS / "unet_tiny_stage1.yaml"), f"components_from={ov['components_from']}",
            f"train_data={ov['train_data']}", "max_train_steps=3", "checkpointing_steps=1"]
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_unet_command([*args, f"output_dir={out}"]) == 1
    reset_accelerate()
    [line] = error_lines(caplog)
    assert line.startswith(f"could not write checkpoint-2 in {out} (OSError: [Errno 28] No space left on device; ")
    assert "MB free there); the last complete checkpoint is checkpoint-1: make room" in line
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-1"]
    monkeypatch.setattr(Accelerator, "save_state", real)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 181632 vs 181520")

    monkeypatch.setattr(unet_trainer, "save_final_pipeline", full)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="latentsync"):
        assert train_unet_command([*args, f"output_dir={tmp_path / 'run2'}"]) == 1
    reset_accelerate()
    assert error_lines(caplog)[0].startswith(f"could not write the trained pipeline in {tmp_path / 'run2'} "
                                             "(RuntimeError: ")
    assert "the last complete checkpoint is checkpoint-3" in error_lines(caplog)[0]


# ---------------------------------------------------------------------------------------------------- data, models
def test_raw_videos_and_non_syncnets_are_refused_before_training(tiny, tmp_path, sync_clips_dir):
    """Raw (not square) videos as train_data, for both trainers, and a folder that holds no SyncNet as syncnet= of
    stage 2 (a U-Net folder ended in a meta-tensor traceback after the U-Net loaded; a U-Net run folder in a
    diffusers error): one line each, nothing written."""
    from conftest import write_video

    from latentsync.data.clips import TrainingDataError
    from latentsync.errors import ModelNotFoundError
    from latentsync.loaders.official import load_syncnet
    from latentsync.training.syncnet_trainer import train_syncnet
    from latentsync.training.unet_trainer import train

    root, ov = tiny
    raw = tmp_path / "raw"
    raw.mkdir()
    frames = [np.full((48, 64, 3), 100 + i, "uint8") for i in range(50)]  # long enough to train on
    write_video(raw / "talk.mp4", frames, audio=np.zeros(32000))
    message = f"train_data={raw} holds videos of 64 x 48 px, not aligned face clips .*latentsync prepare {raw}"
    with pytest.raises(TrainingDataError, match=message):
        train(unet_cfg(ov, train_data=str(raw), output_dir=str(tmp_path / "u")))
    reset_accelerate()
    with pytest.raises(TrainingDataError, match=message):
        train_syncnet(syncnet_cfg(raw, tmp_path / "s"))
    reset_accelerate()
    unet_run = tmp_path / "unet_run"
    (unet_run / "checkpoints").mkdir(parents=True)
    (unet_run / "config.json").write_text("{}")
    cases = [(os.path.join(ov["components_from"], "unet"), "it holds a LatentSyncUNet, not a StableSyncNet"),
             (ov["components_from"], "it holds a lip-sync pipeline"),
             (str(unet_run), "it is the folder of a U-Net training run")]
    for folder, what in cases:
        with pytest.raises(ModelNotFoundError, match=f"syncnet={folder} is no SyncNet: {what}"):
            train(unet_cfg(ov, "unet_tiny.yaml", syncnet=folder, output_dir=str(tmp_path / "u")))
        reset_accelerate()
    with pytest.raises(FileNotFoundError, match="LatentSyncUNet, not a StableSyncNet"):
        load_syncnet(os.path.join(ov["components_from"], "unet"))
    assert not (tmp_path / "u").exists() and not (tmp_path / "s").exists()


def test_run_folder_as_starting_point_is_one_line_before_models_load(tiny, stage1_run, tmp_path, no_model_loads):
    """A run's output folder given as the U-Net or pipeline to start from (instead of its pipeline/): one line
    naming the setting and where the run's model is, before any model loads. It used to load the data, then read the
    run's settings file (config.json) as a U-Net config and end in diffusers' "no file named
    diffusion_pytorch_model.bin"; a SyncNet run folder in "no LatentSync U-Net"."""
    from latentsync.errors import ModelNotFoundError
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    unet_run = stage1_run[0].output_dir
    syncnet_run = tmp_path / "syncnet_run"
    for folder in ("checkpoints/checkpoint-2", "syncnet_best"):
        (syncnet_run / folder).mkdir(parents=True)
    (syncnet_run / "losses.jsonl").write_text("")
    out = tmp_path / "u"
    cases = [("pretrained_unet", unet_run, (f"pretrained_unet: {unet_run} is a training run folder, not a pipeline: "
                                            f"load {unet_run}/pipeline .*export-checkpoint {unet_run}")),
             ("components_from", unet_run, f"components_from: {unet_run} is a training run folder"),
             ("pretrained_unet", str(syncnet_run), (f"pretrained_unet: {syncnet_run} is a SyncNet training run, not "
                                                    "a lip-sync pipeline: use its SyncNet "
                                                    f"{syncnet_run / 'syncnet_best'}"))]
    for setting, folder, message in cases:
        with pytest.raises(ModelNotFoundError, match=message):
            train(unet_cfg(ov, "unet_tiny.yaml", output_dir=str(out), **{setting: folder}))
        reset_accelerate()
    assert not out.exists()


def test_syncnet_windows_that_do_not_fit_the_time_range_end_the_run_before_it_starts(sync_clips_dir, tmp_path):
    """A validation time range too short for a window: one line naming val_time_range before the run starts (it used
    to end the run at its first validation, after validation_steps of training, with nothing saved)."""
    from latentsync.data.clips import TrainingDataError
    from latentsync.training.syncnet_trainer import train_syncnet

    cfg = syncnet_cfg(sync_clips_dir, tmp_path / "s", train_time_range=[0.0, 0.95], val_time_range=[0.95, 1.0])
    with pytest.raises(TrainingDataError, match=r"val_time_range=\[0.95, 1.0\]: could not draw a sample"):
        train_syncnet(cfg)
    reset_accelerate()
    assert not (tmp_path / "s").exists()


def test_misspelt_model_arguments_are_one_line(tmp_path):
    cfg = load_syncnet_config(CONFIGS / "syncnet_tiny.yaml", ["train_data=x", "model_config.num_frame=16"])
    with pytest.raises(TrainingConfigError, match="model_config: num_frame is no StableSyncNet argument "
                                                  r"\(did you mean num_frames\?\)"):
        cfg.validate()


def test_whisper_encoder_folder_loads(tiny):
    """``whisper=`` naming a saved WhisperAudioEncoder (a pipeline's ``audio_encoder/``) instead of a full Whisper
    checkpoint: transformers failed on ``subfolder=None``."""
    from latentsync.training.components import load_whisper_encoder

    _, ov = tiny
    encoder = load_whisper_encoder(os.path.join(ov["components_from"], "audio_encoder"))
    assert type(encoder).__name__ == "WhisperAudioEncoder"


def test_clips_too_short_for_the_windows_end_the_run_before_models_load(tiny, tmp_path, no_model_loads, caplog):
    """num_frames=32 needs clips of 64 frames (ground truth and reference windows); the test clips have 55: one line
    before any model loads, nothing written (it used to come at the first step, after the models loaded and the run
    folder was written, so that running again needed overwrite_output_dir)."""
    from latentsync.data.clips import TrainingDataError
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    with caplog.at_level(logging.WARNING, logger="latentsync"), pytest.raises(
            TrainingDataError, match="all 3 clips could not be used .*shorter than 64 frames.*clip has 55 frames, "
                                     "needs at least 64"):
        train(unet_cfg(ov, num_frames=32, output_dir=str(tmp_path / "run")))
    reset_accelerate()
    assert not (tmp_path / "run").exists()
    # each clip is named once (it was tried round and round: 21 warnings, and "21 clips in a row" for 3 clips)
    assert len([r for r in caplog.records if r.getMessage().startswith("skipping clip")]) == 3


def test_tracker_that_is_not_installed_is_one_line(monkeypatch):
    """report_to=wandb without wandb: accelerate only warned and the run went on without any tracker."""
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    cfg = load_config(CONFIGS / "unet_tiny_stage1.yaml", ["train_data=x", "report_to=wandb"])
    with pytest.raises(TrainingConfigError, match=r"report_to=wandb needs the wandb package, which is not installed: "
                                                  r"install it \(pip install wandb\) or set report_to=null"):
        cfg.validate()


def test_fewer_clips_than_a_batch_is_said(tiny, tmp_path, no_model_loads):
    """3 clips with train_batch_size=4: every step trains on the 3 clips, not the 4 the start-of-run summary
    counts; a warning says so before the models load."""
    from latentsync.training.unet_trainer import train

    _, ov = tiny
    with LogText() as log, pytest.raises(AssertionError, match="a model was loaded"):
        train(unet_cfg(ov, train_batch_size=4, output_dir=str(tmp_path / "run")))
    reset_accelerate()
    assert "train_data holds 3 clips, fewer than a batch of 4: every step trains on those 3 clips" in log.text
