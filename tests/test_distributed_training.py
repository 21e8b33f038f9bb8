"""Both trainers on several processes: ``accelerate launch`` starts 2 CPU processes (torchrun, gloo backend) that run
the real command lines (``tests/distributed_worker.py`` wraps them to record each process's weights after every
step, and to SIGKILL one process).

All of them run in CI: on a quiet 2-core machine each launched test takes 15-30 s (each launch starts two Python
processes that import torch, diffusers and transformers). The tests at the end check, in one process, the pieces the
launched runs rely on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "distributed_worker.py"
STEPS, CHECKPOINT_EVERY, KILL_AT = 4, 2, 3


# ---------------------------------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(trainer: str, record: Path, command_args: list[str], kill_at: int | None = None,
           num_processes: int = 2) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N`` of the worker on CPU processes (``ACCELERATE_USE_CPU``
    makes accelerate use the gloo backend instead of looking for GPUs)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), os.fspath(WORKER), trainer, os.fspath(record)]
    if kill_at is not None:
        cmd += ["--kill-at-step", str(kill_at)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.fspath(ROOT / "src")}
    return subprocess.run(cmd + ["--", *command_args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def records(folder: Path, kind: str = "") -> dict[int, list[dict]]:
    """rank -> the worker's lines: per step (step, weights digest, lr), or with ``kind="_samples"`` per loaded sample
    (dataset size, index)."""
    return {int(p.name[len("rank"):-len(f"{kind}.jsonl")]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(folder.glob(f"rank[0-9]{kind}.jsonl"))}


def losses(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "losses.jsonl").read_text().splitlines()]


def overrides(values: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


BATCH = {"unet": 1, "syncnet": 2}  # per process in the 2-process runs


def trainer_args(trainer: str, data: dict, output_dir: Path, batch: int, **extra) -> list[str]:
    """The command line of a 4-step tiny run (checkpoints every 2 steps) with ``batch`` per process; ``data``: the
    [`data`] fixture."""
    if trainer == "unet":
        return ["--config", os.fspath(ROOT / "train" / "configs" / "unet_tiny.yaml"), *overrides(
            {**data["unet"], "output_dir": os.fspath(output_dir), "max_train_steps": STEPS, "train_batch_size": batch,
             "checkpointing_steps": CHECKPOINT_EVERY, **extra})]
    from latentsync.testing import tiny_syncnet_config

    return overrides({
        "model_preset": None, "model_config": tiny_syncnet_config(32), "train_data": os.fspath(data["syncnet"]),
        "output_dir": os.fspath(output_dir), "train_time_range": [0.0, 0.7], "val_time_range": [0.7, 1.0],
        "train_batch_size": batch, "gradient_accumulation_steps": 2, "max_train_steps": STEPS,
        "checkpointing_steps": CHECKPOINT_EVERY, "validation_steps": 2, "num_val_samples": 8,
        "val_batch_size": 2 * batch, "learning_rate": 1e-3, "mixed_precision": "no",
        "dataloader_num_workers": 0, "progress": False, "seed": 3, **extra})


def final_weights(trainer: str, output_dir: Path) -> dict[str, torch.Tensor]:
    if trainer == "unet":
        return load_file(output_dir / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    return load_file(output_dir / "syncnet" / "diffusion_pytorch_model.safetensors")


def assert_same_weights_on_every_process(recorded: dict[int, list[dict]], steps: list[int]) -> None:
    assert sorted(recorded) == [0, 1], "both processes recorded their weights"
    for rank, lines in recorded.items():
        assert [line["step"] for line in lines] == steps, f"process {rank} recorded steps"
    for a, b in zip(recorded[0], recorded[1]):
        assert a["sha256"] == b["sha256"], f"the processes' weights differ after step {a['step']}"


def assert_close_losses(ours: list[dict], reference: list[dict], rel: float) -> None:
    assert [r["step"] for r in ours] == [r["step"] for r in reference]
    for a, b in zip(ours, reference):
        for key in b:
            if key != "step":
                assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), f"step {a['step']} {key}"


# ---------------------------------------------------------------------------------------------------- launched runs
TRAINERS = ["unet", "syncnet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_training, sync_clips_dir) -> dict:
    """The tiny models and clips: ``{"unet": U-Net config overrides, "syncnet": clips folder}``. The U-Net runs on 6
    clips, 3 global batches of 2 per epoch, so that the resumed run starts in the middle of an epoch (step 3 is its
    third batch) and crosses into the next."""
    from latentsync.testing import write_synthetic_clip

    _, models = tiny_training
    clips = tmp_path_factory.mktemp("unet_clips")
    for c in range(6):
        write_synthetic_clip(os.fspath(clips / f"clip{c}.mp4"), seed=c)
    return {"unet": {**models, "train_data": os.fspath(clips)}, "syncnet": sync_clips_dir}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """``runs(trainer, kind)``: the output folder (and worker records) of a finished run, made once per module. Kinds:
    ``"single"``, one process in this one with batch 2B; ``"two"``, 2 launched processes with batch B."""
    from latentsync.commands.train import train_syncnet_command, train_unet_command

    made: dict[tuple[str, str], Path] = {}

    def get(trainer: str, kind: str) -> Path:
        if (trainer, kind) not in made:
            folder = tmp_path_factory.mktemp(f"{trainer}_{kind}")
            batch = BATCH[trainer]
            if kind == "single":
                command = train_unet_command if trainer == "unet" else train_syncnet_command
                assert command(trainer_args(trainer, data, folder / "run", 2 * batch)) == 0
            else:
                run = launch(trainer, folder / "records",
                             trainer_args(trainer, data, folder / "run", batch))
                assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
                assert run.stdout.count('"global_step"') == 1, "one summary line (the main process's)"
            made[trainer, kind] = folder
        return made[trainer, kind]

    return get


@pytest.mark.parametrize("trainer", TRAINERS)
def test_two_processes_train_like_one_with_the_global_batch(trainer, runs):
    """2 processes with batch B: each trains on its own samples, together on all of them; the same weights on both
    after every step (and an RNG state each in the checkpoints); the step losses and final weights of one process
    with batch 2B."""
    single, two = runs(trainer, "single") / "run", runs(trainer, "two")
    train_size = 6 if trainer == "unet" else STEPS * 2 * 2 * BATCH[trainer]  # clips; pairs (accumulation 2)
    trained = STEPS * (1 if trainer == "unet" else 2) * BATCH[trainer]  # samples per process
    samples = {rank: [r["index"] for r in lines if r["dataset_size"] == train_size]
               for rank, lines in records(two / "records", "_samples").items()}
    # accelerate's loader reads one batch ahead: a run that stops mid-epoch has loaded one batch it does not train on
    assert trained <= len(samples[0]) == len(samples[1]) <= trained + BATCH[trainer]
    samples = {rank: indices[:trained] for rank, indices in samples.items()}
    assert not set(samples[0]) & set(samples[1]), "no sample is trained on by both processes"
    everything = STEPS * 2 * BATCH[trainer] * (1 if trainer == "unet" else 2)
    assert len(set(samples[0]) | set(samples[1])) == everything, "the processes' samples are all different"
    assert_same_weights_on_every_process(records(two / "records"), list(range(1, STEPS + 1)))
    assert_close_losses(losses(two / "run"), losses(single), rel=1e-4)
    reference = final_weights(trainer, single)
    for name, value in final_weights(trainer, two / "run").items():  # Adam turns rounding-level differences of
        # near-zero gradients into differences of up to a learning rate (1e-3 for the SyncNet): 2 % of that is allowed
        np.testing.assert_allclose(value.numpy(), reference[name].numpy(), rtol=1e-4, atol=2e-5, err_msg=name)
    checkpoint = two / "run" / "checkpoints" / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == [
        "random_states_0.pkl", "random_states_1.pkl"]
    assert json.loads((checkpoint / "process_layout.json").read_text())["num_processes"] == 2


@pytest.mark.parametrize("trainer", TRAINERS)
def test_killed_run_resumes_to_the_uninterrupted_losses(trainer, runs, data, tmp_path):
    """2 processes, process 1 killed with SIGKILL during step 3, relaunched with resume_from_checkpoint=latest: it
    resumes from the step-2 checkpoint and its steps 3 and 4 give the uninterrupted run's losses and weights, bit for
    bit."""
    two = runs(trainer, "two")
    killed = tmp_path / "run"
    run = launch(trainer, tmp_path / "rec_killed",
                 trainer_args(trainer, data, killed, BATCH[trainer]), kill_at=KILL_AT)
    assert run.returncode != 0
    assert "SIGKILL" in run.stderr
    assert [p.name for p in (killed / "checkpoints").iterdir()] == [f"checkpoint-{CHECKPOINT_EVERY}"]
    assert [line["step"] for line in records(tmp_path / "rec_killed")[1]] == list(range(1, KILL_AT + 1))

    run = launch(trainer, tmp_path / "rec_resumed", trainer_args(trainer, data, killed,
                                                                 BATCH[trainer], resume_from_checkpoint="latest"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    resumed = records(tmp_path / "rec_resumed")
    assert_same_weights_on_every_process(resumed, list(range(CHECKPOINT_EVERY + 1, STEPS + 1)))
    uninterrupted = {line["step"]: line["sha256"] for line in records(two / "records")[0]}
    assert [line["sha256"] for line in resumed[0]] == [uninterrupted[s] for s in range(CHECKPOINT_EVERY + 1,
                                                                                       STEPS + 1)]
    assert losses(killed) == losses(two / "run"), "the resumed run's step losses are the uninterrupted run's"


# ---------------------------------------------------------------------------------------------------- one process
def test_draws_for_the_global_batch_are_sliced_per_process():
    """What process r of N draws is rows r of the one-process draw for the whole global batch (also for inputs
    made of several batches, as the three clips the U-Net trainer encodes in one VAE call)."""
    from types import SimpleNamespace

    from latentsync.training.base import draw_for_global_batch

    def draw(shape):
        return torch.randn(shape, generator=torch.Generator().manual_seed(5))

    whole = draw((3 * 4, 2))  # 3 groups x global batch 4
    for rank in range(2):
        acc = SimpleNamespace(num_processes=2, process_index=rank)
        part = draw_for_global_batch(acc, draw, (3 * 2, 2), groups=3)
        expected = whole.reshape(3, 2, 2, 2)[:, rank].reshape(6, 2)
        assert torch.equal(part, expected)
    one = SimpleNamespace(num_processes=1, process_index=0)
    assert torch.equal(draw_for_global_batch(one, draw, (4, 2)), draw((4, 2)))
    with pytest.raises(ValueError, match="blocks"):
        draw_for_global_batch(SimpleNamespace(num_processes=2, process_index=0), draw, (5, 2), groups=3)


def test_a_checkpoint_of_another_process_layout_is_refused(tmp_path):
    """Resuming needs the saving run's processes and batch (data position and RNG states are per process): anything
    else is refused with what differs, before any state loads."""
    from types import SimpleNamespace

    from latentsync.training import base
    from latentsync.training.config import SyncNetTrainingConfig, TrainingConfigError

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / base.LAYOUT_FILE).write_text(json.dumps(
        {"num_processes": 8, "train_batch_size": 4, "gradient_accumulation_steps": 1}))
    cfg = SyncNetTrainingConfig(model_preset=None, model_config={"a": 1}, train_data="x",
                                output_dir=os.fspath(tmp_path), train_batch_size=4)
    loaded = []
    acc = SimpleNamespace(num_processes=2, load_state=loaded.append)
    with pytest.raises(TrainingConfigError, match=r"num_processes 8 \(now 2\)"):
        base.load_checkpoint(acc, cfg, os.fspath(checkpoint))
    assert loaded == []
    base.load_checkpoint(SimpleNamespace(num_processes=8, load_state=loaded.append), cfg, os.fspath(checkpoint))
    assert loaded == [os.fspath(checkpoint)]
    (checkpoint / base.LAYOUT_FILE).unlink()  # checkpoints of earlier versions have no layout: loaded as they are
    base.load_checkpoint(acc, cfg, os.fspath(checkpoint))
    assert loaded == [os.fspath(checkpoint)] * 2
