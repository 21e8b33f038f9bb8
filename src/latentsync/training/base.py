"""What both trainers do the same way: the accelerator, the optimiser step, checkpoints, the loss log, the run's
saved settings, and how several processes share a run.

Several processes (``accelerate launch --num_processes N``, on one machine or several) train one model with
distributed data parallelism: each process trains on its own part of every global batch (the data loader yields the
global batch of ``N x train_batch_size`` samples and accelerate gives each process its slice) and the gradients are
averaged, so every process holds the same weights after every step. The random draws of a step (VAE posterior
samples, noise, timesteps) are made for the whole global batch from the torch RNG, which all processes seed alike,
and each process keeps its rows ([`draw_for_global_batch`]): N processes with batch B compute what one process with
batch N x B would. Only the main process writes files (the run folder, the loss log, validation videos, the results)
and pushes to the Hub; every process saves and restores its own RNG state with the checkpoint.

Checkpoints are ``accelerator.save_state`` folders (model, optimiser, LR scheduler, registered objects, RNG states)
named ``checkpoint-<step>`` under ``output_dir/checkpoints``. Each is written to a hidden temporary folder and
renamed when complete, so a run killed while saving never leaves a checkpoint that ``latest`` would pick and fail
to load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    broadcast_object_list,
)
from diffusers.optimization import get_scheduler
from huggingface_hub import HfApi, snapshot_download

from .. import hub
from ..errors import RunInterrupted, first_line
from ..interrupts import interrupt_of, signal_number
from ..model_source import RUN_SETTINGS_FILE, HubUnavailableError, check_hub_available
from ..tempfiles import folder_held, lock_folder, make_missing_folders, nearest_folder, writable_problem
from ..utils import read_json
from .config import TrainingConfig, TrainingConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
HUB_CHECKPOINTS = "checkpoints"  # where checkpoints go in a Hub repo (as in output_dir)
LOSS_LOG = "losses.jsonl"
HISTORY_FILE = "history.json"
LOSS_CHART = "loss_chart.png"
STATE_FILE = "training_state.json"
LAYOUT_FILE = "process_layout.json"  # in a checkpoint: how many processes, with which batch, saved it
MODEL_CONFIG_FILE = "model_config.json"
RUN_CONFIG_FILE = "run_config.json"  # in a checkpoint: the settings of the run that saved it
# the run's settings at the top of its output_dir, both trainers (RUN_SETTINGS_FILE, YAML: reusable as --config);
# U-Net runs of earlier versions wrote them as JSON, which diffusers' loaders took for a model's config.json
SETTINGS_FILE = RUN_SETTINGS_FILE
LEGACY_SETTINGS_FILE = "config.json"
# what a training run writes at its top level: a folder holding one of these can be overwritten
RUN_FILES = (SETTINGS_FILE, LEGACY_SETTINGS_FILE, LOSS_LOG, HISTORY_FILE, "checkpoints")


# ---------------------------------------------------------------------------------------------------- run folder
def check_output_dir(cfg: TrainingConfig) -> None:
    """Refuse a new run into a non-empty ``output_dir`` (its checkpoints, loss log and results would mix with this
    run's) unless the run resumes or ``overwrite_output_dir`` is set; refuse to overwrite a folder that does not
    hold a training run. Reads only."""
    out = cfg.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainingConfigError(f"output_dir {out} is a file, not a folder")
    existing, blocker = nearest_folder(out)
    if blocker is not None:
        raise TrainingConfigError(f"cannot create output_dir {out}: {blocker} is a file")
    problem = writable_problem(existing)
    if problem is not None:
        raise TrainingConfigError(f"cannot write output_dir {out}: {existing} is not writable ({problem})")
    if not os.path.isdir(out) or not os.listdir(out) or cfg.resume_from_checkpoint:
        return
    if not cfg.overwrite_output_dir:
        raise TrainingConfigError(
            f"output_dir {out} already holds a run: continue it with resume_from_checkpoint=latest, replace it with "
            "overwrite_output_dir=true, or choose another output_dir")
    if not any(os.path.exists(os.path.join(out, name)) for name in RUN_FILES):
        raise TrainingConfigError(
            f"output_dir {out} is not empty and holds no training run ({', '.join(RUN_FILES)}): not deleting it, "
            "choose another output_dir")
    # every file or folder the run reads (data, starting weights, SyncNet, validation clips) must survive the delete
    inside = os.path.realpath(out) + os.sep
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "output_dir" or not isinstance(value, (str, os.PathLike)) or not os.path.exists(value):
            continue
        if os.path.realpath(value).startswith(inside):
            raise TrainingConfigError(f"{field.name} {os.fspath(value)} is inside output_dir {out}, which "
                                      f"overwrite_output_dir would delete: move it or choose another output_dir")


def check_hub_settings(cfg: TrainingConfig) -> None:
    """Refuse at once, before anything loads, a run that needs the Hub while it cannot be reached (offline mode, or
    no connection within a few seconds): ``resume_from_checkpoint=hub`` (its download) and ``push_to_hub`` (its
    uploads), instead of failing after the Hub libraries' retries or, for a push, at the end of the run.

    Raises:
        HubUnavailableError: one line naming the setting, why the Hub cannot be reached and what to do instead.
    """
    if cfg.resume_from_checkpoint == "hub":
        local = list_checkpoints(cfg.output_dir)
        instead = (f"resume from the copy here with resume_from_checkpoint=latest ({local[-1]})" if local else
                   "copy the checkpoint folder to this machine and pass it as resume_from_checkpoint=FOLDER")
        check_hub_available(f"resume_from_checkpoint=hub (the newest checkpoint of {cfg.hub_model_id})", instead)
    if cfg.push_to_hub:
        check_hub_available(f"push_to_hub=true (uploads to {cfg.hub_model_id})",
                            f"train with push_to_hub=false and upload the result later (`hf upload {cfg.hub_model_id} "
                            "FOLDER`)")


@contextlib.contextmanager
def output_dir_claimed(accelerator: Accelerator, cfg: TrainingConfig) -> Iterator[None]:
    """Hold ``output_dir`` for this run within the block: the main process creates it when missing and locks it
    (``flock``, released when the process ends, however it ends; Windows has none: no lock there), so a second run
    into the same folder at the same time is refused at once instead of mixing its checkpoints and loss log with this
    one's. A folder this run created is removed again when the run fails before writing anything into it.

    Raises:
        TrainingConfigError: another process holds the folder (one line, on every process).
    """
    fd, created = None, []
    answer: list[Any] = [None]
    if accelerator.is_main_process:
        created = make_missing_folders(cfg.output_dir)
        try:
            fd = lock_folder(cfg.output_dir)
        except BlockingIOError:
            answer = [(f"output_dir {cfg.output_dir} is in use by another training run right now (it holds the "
                       "folder's lock): wait for that run to end, or choose another output_dir")]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    if answer[0] is not None:
        raise TrainingConfigError(answer[0])
    with folder_held(created, fd):
        yield


def start_output_dir(accelerator: Accelerator, cfg: TrainingConfig) -> None:
    """Make ``output_dir`` ready (deleting the old run first with ``overwrite_output_dir``) and save the settings
    there as [`SETTINGS_FILE`], local paths made absolute (main process; a resumed run of an earlier version's
    ``config.json`` has it replaced)."""
    accelerator.wait_for_everyone()  # every process has checked the folder (check_output_dir) before it changes
    if accelerator.is_main_process:
        if cfg.overwrite_output_dir and os.path.isdir(cfg.output_dir) and os.listdir(cfg.output_dir):
            logger.warning("overwrite_output_dir: deleting the previous run in %s", cfg.output_dir)
            for name in os.listdir(cfg.output_dir):
                path = os.path.join(cfg.output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        os.makedirs(cfg.output_dir, exist_ok=True)
        # local paths absolute: the file reads the same from any working directory (export-checkpoint, --config)
        save_run_config(cfg.with_absolute_paths(), os.path.join(cfg.output_dir, SETTINGS_FILE))
        legacy = os.path.join(cfg.output_dir, LEGACY_SETTINGS_FILE)
        if os.path.isfile(legacy):
            os.remove(legacy)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------- setup
def create_accelerator(cfg: TrainingConfig) -> Accelerator:
    """An ``Accelerator`` for the run: mixed precision (fp16 needs a GPU: fp32 without one), gradient accumulation,
    trackers logging to ``output_dir/logging_dir``; TF32 matmuls on Ampere GPUs when ``allow_tf32``.

    Under ``accelerate launch`` with several processes the data loaders yield global batches that accelerate splits
    between the processes (see [`loader_batch_size`]), and only the main process logs below warnings."""
    mixed_precision = cfg.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logger.warning("fp16 mixed precision needs a GPU: training in fp32")
        mixed_precision = "no"
    accelerator = Accelerator(
        # every optimisation step is gradient_accumulation_steps batches, also across the end of an epoch (by default
        # accelerate ends a step early there): the data position of a step is then step x accumulation batches,
        # which resuming relies on, and each logged loss is the mean of that many batches
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        mixed_precision=mixed_precision,
        log_with=cfg.report_to,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                            logging_dir=os.path.join(cfg.output_dir, cfg.logging_dir)),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if not accelerator.is_main_process:  # one copy of the run's log lines, not one per process
        logging.getLogger("latentsync").setLevel(logging.WARNING)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def loader_batch_size(accelerator: Accelerator, per_process: int) -> int:
    """The batch size of a data loader given to ``accelerator.prepare``: the global batch (``per_process`` samples
    for each process), which accelerate splits so that each process loads and trains on its own slice. The epochs,
    the shuffling and ``drop_last`` are thus those of the global batch, the same for any number of processes."""
    return per_process * accelerator.num_processes


def draw_for_global_batch(accelerator: Accelerator | None, draw: Callable[[tuple[int, ...]], torch.Tensor],
                          shape: Sequence[int], groups: int = 1) -> torch.Tensor:
    """Random values of ``shape`` for this process's slice of the global batch.

    ``draw(global_shape)`` makes the values of the whole global batch (the first dimension times the number of
    processes) from the torch RNG, which every process seeds and advances alike, and this process keeps its rows: a
    sample gets the same values whichever process trains it and however many processes there are. ``groups``: the
    first dimension is that many blocks laid out like the batch (e.g. three sets of clips encoded in one call). One
    process (or no accelerator): just ``draw(shape)``."""
    shape = tuple(shape)
    n = accelerator.num_processes if accelerator is not None else 1
    if n == 1:
        return draw(shape)
    if shape[0] % groups:
        raise ValueError(f"the first dimension of {shape} is not {groups} blocks")
    rows = shape[0] // groups
    full = draw((shape[0] * n, *shape[1:]))
    return full.reshape(groups, n, rows, *shape[1:])[:, accelerator.process_index].reshape(shape)


def rng_kept(accelerator: Accelerator) -> contextlib.AbstractContextManager:
    """A context that restores the torch RNG (CPU and the accelerator's GPU) on leaving: work that only the main
    process does (a validation video) must not move its RNG away from the other processes'."""
    device = accelerator.device
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen models under the accelerator's mixed precision."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def settings_file(run_dir: str) -> str | None:
    """The file holding the settings of the run in ``run_dir`` ([`SETTINGS_FILE`], or the ``config.json`` of a U-Net
    run of an earlier version); None when there is none."""
    for name in (SETTINGS_FILE, LEGACY_SETTINGS_FILE):
        if os.path.isfile(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None


def run_start_folder(run_dir: str, output_dir: str | None) -> str | None:
    """The working directory a run was started in, as its folder tells it: ``run_dir`` without the relative
    ``output_dir`` the run saved (``/work/outputs/run`` and ``outputs/run`` -> ``/work``). None when ``output_dir`` is
    absolute or is not how ``run_dir`` ends (a moved or renamed run folder)."""
    if not output_dir or os.path.isabs(output_dir):
        return None
    run, tail = os.path.abspath(run_dir), os.path.normpath(output_dir)
    if tail.startswith(os.pardir) or not run.endswith(os.sep + tail):
        return None
    return run[: -len(tail) - 1] or os.sep


def save_run_config(cfg: TrainingConfig, path: str) -> None:
    """Write the run's settings next to its outputs (YAML or JSON by the file's ending)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        if path.endswith((".yaml", ".yml")):
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
        else:
            json.dump(cfg.to_dict(), fh, indent=2)


def init_trackers(accelerator: Accelerator, cfg: TrainingConfig, project: str) -> None:
    """Start the trackers of ``report_to`` (main process) with the run's scalar settings."""
    if accelerator.is_main_process and cfg.report_to:
        scalars = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(project, config=scalars)


def create_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainingConfig,
                     learning_rate: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``params`` and the LR schedule ``cfg.lr_scheduler`` over ``max_train_steps`` optimisation steps
    (accelerate steps it once per optimisation step, as the loaders yield global batches)."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate or cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    return optimizer, _lr_schedule(cfg, optimizer)


def _lr_schedule(cfg: TrainingConfig, optimizer: torch.optim.Optimizer) -> Any:
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                         num_training_steps=cfg.max_train_steps)


def schedule_text(cfg: TrainingConfig) -> str:
    """The LR schedule in words for the start-of-run summary, e.g. ``linear schedule, 100 warmup steps``."""
    warmup = f", {cfg.lr_warmup_steps} warmup steps" if cfg.lr_warmup_steps and cfg.lr_scheduler != "constant" else ""
    return f"{cfg.lr_scheduler} schedule{warmup}"


def scheduled_learning_rates(cfg: TrainingConfig, learning_rate: float, steps: Sequence[int]) -> list[float]:
    """The learning rate that the schedule of ``cfg`` with peak ``learning_rate`` gives after each of ``steps``
    optimisation steps (the rate step ``s + 1`` trains with), without an optimiser of the real parameters."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    factor = _lr_schedule(cfg, probe).lr_lambdas[0]
    return [learning_rate * factor(s) for s in steps]


def _schedule_probe_steps(start: int, settings: Sequence[TrainingConfig]) -> list[int]:
    """Steps at which two LR schedules are compared from ``start`` on: every step near the warmup ends and the ends
    of ``settings``' schedules, and 200 spread over the steps still to train (a schedule is smooth in between)."""
    end = settings[-1].max_train_steps - 1  # the last step's rate (the rates after it are never used)
    marks = {start, start + 1, end}
    for cfg in settings:
        for mark in (cfg.lr_warmup_steps, cfg.max_train_steps):
            marks.update((mark - 1, mark, mark + 1))
    marks.update(start + (end - start) * i // 200 for i in range(201))
    return sorted(s for s in marks if start <= s <= end)


def check_lr_schedule(cfg: TrainingConfig, saved: dict[str, Any], name: str, step: int, num_processes: int) -> None:
    """Refuse to resume checkpoint ``name`` (saved at ``step`` by a run with the settings ``saved``) when this run's
    ``SCHEDULE_SETTINGS`` (peak learning rate, schedule, warmup, ``max_train_steps``) differ from the saved ones in a
    way that changes the learning rate of a step still to train (the checkpoint's schedule state would silently be
    combined with the new settings), unless ``change_lr_schedule`` is set: then the change and the learning rate the
    run goes on with are logged as a warning (see [`restart_lr_schedule`]). Settings that differ without changing any
    rate still to use (a longer run on a constant schedule) are logged."""
    now = cfg.to_dict()
    changed = [key for key in cfg.SCHEDULE_SETTINGS if key in saved and saved[key] != _as_saved(now[key])]
    if not changed or step >= cfg.max_train_steps:
        return
    before = dataclasses.replace(cfg, **{key: saved[key] for key in changed})
    steps = _schedule_probe_steps(step, (before, cfg))
    new = scheduled_learning_rates(cfg, cfg.effective_learning_rate(num_processes), steps)
    try:
        old = scheduled_learning_rates(before, before.effective_learning_rate(num_processes), steps)
    except (TypeError, ValueError):  # a schedule this version does not know: every rate counts as changed
        old = [math.nan] * len(steps)
    what = ", ".join(f"{key} {json.dumps(saved[key])} -> {json.dumps(_as_saved(now[key]))}" for key in changed)
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)),
                 None)
    if first is None:
        logger.info("resuming from %s with %s: the learning rate of the steps still to train is the same", name, what)
        return
    rate = f"step {steps[first] + 1}: {new[first]:.4g} instead of {old[first]:.4g}"
    if cfg.change_lr_schedule:
        logger.warning("resuming from %s with a changed learning-rate schedule (change_lr_schedule=true): %s; the run "
                       "follows the new schedule from step %d on (%s)", name, what, step + 1, rate)
        return
    raise TrainingConfigError(
        f"{name} was saved with another learning-rate schedule ({what}), which changes the learning rate of the steps "
        f"still to train ({rate}): resume with the settings it was saved with (in its {RUN_CONFIG_FILE}), or add "
        f"change_lr_schedule=true to go on with the new schedule from step {step + 1}")


def restart_lr_schedule(optimizer: Any, lr_scheduler: Any, learning_rate: float) -> None:
    """After a checkpoint's state was loaded (``change_lr_schedule``): put the optimiser on this run's schedule at
    the checkpoint's step, with ``learning_rate`` as its peak instead of the saved one. The schedule's function is
    this run's already (a checkpoint keeps only the step count and the peak rates)."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper holds the torch scheduler
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    rates = [learning_rate * factor(scheduler.last_epoch) for factor in scheduler.lr_lambdas]
    for group, rate in zip(optimizer.param_groups, rates):
        group["initial_lr"], group["lr"] = learning_rate, rate
    scheduler._last_lr = rates


def optimizer_step(accelerator: Accelerator, loss: torch.Tensor, params: Iterable[torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer, lr_scheduler: Any, max_grad_norm: float) -> None:
    """Backward pass, gradient clipping on the step that updates, and the optimiser / LR scheduler step (inside
    ``accelerator.accumulate``, which turns the step into a no-op until the last micro-batch)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, HUB_CHECKPOINTS)


def checkpoint_step(path: str) -> int:
    """The step a checkpoint folder was saved at (from its name)."""
    return int(os.path.basename(os.path.normpath(path))[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints of the run in ``output_dir``, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if d.startswith(CHECKPOINT_PREFIX) and d[len(CHECKPOINT_PREFIX):].isdigit()]
    return [os.path.join(root, d) for d in sorted(names, key=checkpoint_step)]


def resolve_resume(cfg: TrainingConfig, accelerator: Accelerator | None = None) -> str | None:
    """Folder to resume from: ``resume_from_checkpoint`` itself, with ``latest`` the newest checkpoint of
    ``output_dir``, with ``hub`` the newest checkpoint pushed to ``hub_model_id`` (downloaded); None, starting from
    scratch, when there is none. With an ``accelerator`` the main process decides (and downloads) and every process
    gets its answer, so all resume from the same checkpoint. The checkpoint is checked before anything loads (see
    [`check_resume_point`])."""
    num_processes = accelerator.num_processes if accelerator is not None else 1
    if num_processes == 1:
        return _find_resume(cfg, num_processes)
    answer: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            answer = [("ok", _find_resume(cfg, num_processes))]
        except Exception as exc:  # noqa: BLE001 - sent to every process and raised there, not left to hang them
            answer = [("error", exc)]
    broadcast_object_list(answer)
    kind, value = answer[0]
    if kind == "error":
        raise value
    return value


def _find_resume(cfg: TrainingConfig, num_processes: int) -> str | None:
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "hub":
        path = download_hub_checkpoint(cfg)
    elif cfg.resume_from_checkpoint == "latest":
        found = list_checkpoints(cfg.output_dir)
        if not found:
            logger.info("no checkpoint in %s: starting from scratch", cfg.output_dir)
            return None
        path = found[-1]
    elif not os.path.isdir(cfg.resume_from_checkpoint):
        raise TrainingConfigError(f"checkpoint folder not found: {cfg.resume_from_checkpoint}")
    else:
        path = cfg.resume_from_checkpoint
        if not re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", os.path.basename(os.path.normpath(path))):
            # a run folder (its checkpoints/ inside) or its checkpoints/ folder, given instead of one checkpoint
            inside = list_checkpoints(path) or list_checkpoints(os.path.dirname(os.path.normpath(path)))
            hint = (f": its newest checkpoint is {inside[-1]} (or resume with resume_from_checkpoint=latest and "
                    f"output_dir set to the run folder)" if inside else "")
            raise TrainingConfigError(f"resume_from_checkpoint={path} is not a checkpoint folder "
                                      f"({CHECKPOINT_PREFIX}<step>){hint}")
    if path is not None:
        check_resume_point(cfg, path, num_processes)
    return path


def process_layout(accelerator: Accelerator, cfg: TrainingConfig) -> dict[str, int]:
    """How the run splits its global batch: processes, batch per process, accumulation (saved with checkpoints)."""
    return {"num_processes": accelerator.num_processes, "train_batch_size": cfg.train_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps}


def _check_layout(cfg: TrainingConfig, path: str, num_processes: int) -> None:
    saved = read_json(os.path.join(path, LAYOUT_FILE))
    now = {"num_processes": num_processes, "train_batch_size": cfg.train_batch_size,
           "gradient_accumulation_steps": cfg.gradient_accumulation_steps}
    if saved is not None and saved != now:
        differ = ", ".join(f"{k} {saved.get(k)} (now {v})" for k, v in now.items() if saved.get(k) != v)
        raise TrainingConfigError(
            f"{path} was saved by a run with {differ}: resume with the same number of processes, train_batch_size "
            "and gradient_accumulation_steps (the data position and the random states are per process)")


def _as_saved(value: Any) -> Any:
    """A setting's value as a checkpoint's ``run_config.json`` holds it."""
    return json.loads(json.dumps(value, default=str))


def check_resume_point(cfg: TrainingConfig, path: str, num_processes: int = 1) -> None:
    """Refuse, before anything loads, a checkpoint this run cannot continue from, with one line saying why: another
    process layout (see [`load_checkpoint`]); a step beyond ``max_train_steps``; later checkpoints in ``output_dir``
    (those of the run that went on from ``path``: this run would overwrite them one by one, its rotation would keep
    them instead of its own, and ``latest`` would pick them); settings that shape the saved state
    (``cfg.RESUME_SETTINGS``: the model's layers, what trains, LoRA, EMA) other than those the checkpoint was saved
    with; a changed learning-rate schedule (see [`check_lr_schedule`]). Settings the checkpoint's optimiser state
    overrides (``cfg.SAVED_SETTINGS``, e.g. ``adam_weight_decay``) are logged as a warning when they differ."""
    _check_layout(cfg, path, num_processes)
    name, step = os.path.basename(os.path.normpath(path)), checkpoint_step(path)
    if step > cfg.max_train_steps:
        raise TrainingConfigError(
            f"{name} is at step {step}, beyond max_train_steps={cfg.max_train_steps}: nothing to train; set "
            f"max_train_steps above {step} to train on, or turn the checkpoint into a model with "
            f"`latentsync export-checkpoint {cfg.output_dir} --step {step} OUTPUT`")
    later = [c for c in list_checkpoints(cfg.output_dir) if checkpoint_step(c) > step]
    if later:
        names = ", ".join(os.path.basename(c) for c in later)
        raise TrainingConfigError(
            f"{checkpoint_root(cfg.output_dir)} holds checkpoints after step {step} ({names}), of the run that went "
            f"on from there: resuming from {name} would overwrite them step by step and `latest` would pick them; "
            "move them out of that folder first, or resume into another output_dir")
    saved = read_json(os.path.join(path, RUN_CONFIG_FILE))
    if saved is None:  # checkpoints of earlier versions: load_checkpoint reports a state that does not fit
        return
    now = cfg.to_dict()
    differ = [f"{key}={json.dumps(saved.get(key))} (now {json.dumps(_as_saved(now[key]))})"
              for key in cfg.RESUME_SETTINGS if key in now and saved.get(key) != _as_saved(now[key])]
    if differ:
        raise TrainingConfigError(
            f"{name} was saved with {', '.join(differ)}: resume with the settings it was saved with (they shape "
            f"the model and optimiser state it holds; all of them are in {os.path.join(path, RUN_CONFIG_FILE)})")
    check_lr_schedule(cfg, saved, name, step, num_processes)
    ignored = [f"{key}={json.dumps(_as_saved(now[key]))} (the checkpoint's: {json.dumps(saved.get(key))})"
               for key in cfg.SAVED_SETTINGS if key in now and key in saved and saved[key] != _as_saved(now[key])]
    if ignored:
        logger.warning("not used when resuming: %s; the run goes on with the optimiser state saved in %s",
                       ", ".join(ignored), name)


def load_checkpoint(accelerator: Accelerator, cfg: TrainingConfig, path: str, optimizer: Any = None,
                    lr_scheduler: Any = None) -> None:
    """Restore the accelerator state saved in ``path`` (model, optimiser, LR schedule, registered objects and each
    process's RNG state). The data position follows from the checkpoint's step, so the run must split its batches
    as the one that saved it did: a checkpoint of another process count or batch is refused with what differs. A
    state that does not fit this run's model or optimiser (a checkpoint of other settings) is one line. With
    ``change_lr_schedule`` the ``optimizer`` and ``lr_scheduler`` then go on with this run's schedule (see
    [`check_lr_schedule`])."""
    _check_layout(cfg, path, accelerator.num_processes)
    try:
        accelerator.load_state(path)
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
        if interrupt_of(exc) is not None:
            raise
        first = first_line(exc)
        raise TrainingConfigError(
            f"cannot resume from {path}: its saved state does not fit this run's model or optimiser ({first}); resume "
            "with the settings it was saved with") from exc
    if cfg.change_lr_schedule and optimizer is not None and lr_scheduler is not None:
        restart_lr_schedule(optimizer, lr_scheduler, cfg.effective_learning_rate(accelerator.num_processes))


def save_checkpoint(accelerator: Accelerator, cfg: TrainingConfig, step: int,
                    extra_json: dict[str, Any] | None = None) -> str:
    """Save the accelerator state (and ``extra_json``: file name -> JSON data, e.g. [`TrainingLog.state`] and the
    model config; and the [`process_layout`]) as ``checkpoint-<step>``, atomically, then delete the oldest
    checkpoints beyond ``checkpoints_total_limit`` and push it (``push_to_hub``).

    Every process takes part (each writes its RNG state, ``random_states_<rank>.pkl``); the main process writes the
    rest and renames, deletes and pushes. With several machines ``output_dir`` must be a folder they share."""
    root = checkpoint_root(cfg.output_dir)
    final = os.path.join(root, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(root, f".tmp-{CHECKPOINT_PREFIX}{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):  # what saves that were killed left (the next save of their step rewrites them)
            if name.startswith(f".tmp-{CHECKPOINT_PREFIX}") and name != os.path.basename(tmp):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    with saving(cfg, f"checkpoint-{step}", partial=tmp):
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {**(extra_json or {}), LAYOUT_FILE: process_layout(accelerator, cfg),
                     RUN_CONFIG_FILE: cfg.to_dict()}
            for name, data in files.items():
                with open(os.path.join(tmp, name), "w") as fh:
                    json.dump(data, fh, default=str)
    if accelerator.is_main_process:
        if os.path.isdir(final):  # an earlier save of this step: out of the way first, so a kill never halves it
            _remove_checkpoint(final)
        os.replace(tmp, final)
        if cfg.checkpoints_total_limit:  # the oldest go; never this one, nor any of a later step
            older = [c for c in list_checkpoints(cfg.output_dir) if checkpoint_step(c) < step]
            for old in older[: max(0, len(older) - (cfg.checkpoints_total_limit - 1))]:
                _remove_checkpoint(old)
        logger.info("saved checkpoint %s", final)
        if cfg.push_to_hub and cfg.hub_strategy != "end":
            push_checkpoint(cfg, final)
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(path: str) -> None:
    """Delete a checkpoint folder: renamed to a hidden name first (one atomic step), then removed, so that a run
    killed meanwhile leaves no half-deleted ``checkpoint-<step>`` that ``latest`` or an export would take for a
    complete one (the next save removes what is left)."""
    hidden = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-removed")
    if os.path.isdir(hidden):  # what an earlier removal of this step left
        shutil.rmtree(hidden, ignore_errors=True)
    try:
        os.replace(path, hidden)
    except OSError:  # cannot be renamed (a folder not ours to change): deleted in place, as far as it can be
        hidden = path
    shutil.rmtree(hidden, ignore_errors=True)


class TrainingStorageError(RuntimeError):
    """A run could not write to its ``output_dir`` (a full disk, a folder turned read-only): the message names what
    was being written, why, and the last complete checkpoint to resume from."""


def storage_error(cfg: TrainingConfig, what: str, exc: BaseException,
                  partial: str | None = None) -> TrainingStorageError:
    """The one-line error for ``what`` (a checkpoint, the final model, a log file) that could not be written to
    ``output_dir`` because of ``exc``; ``partial``, the half-written folder, is removed first (after the free space
    is measured)."""
    first = first_line(exc)
    folder = nearest_folder(cfg.output_dir)[0]
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    found = list_checkpoints(cfg.output_dir)
    resume = (f"the last complete checkpoint is {os.path.basename(found[-1])}: make room (or make the folder "
              "writable) and resume with resume_from_checkpoint=latest" if found else
              "no checkpoint was saved: make room (or make the folder writable) and run again")
    return TrainingStorageError(f"could not write {what} in {cfg.output_dir} ({type(exc).__name__}: {first}; {free}); "
                                f"{resume}")


@contextlib.contextmanager
def saving(cfg: TrainingConfig, what: str, partial: str | None = None) -> Iterator[None]:
    """Within the block, ``what`` (a checkpoint, the trained model) is written to ``output_dir``: a failure (a full
    disk, a folder turned read-only; the libraries' errors for it vary) becomes one [`TrainingStorageError`] line
    (see [`storage_error`]) and ``partial``, the half-written folder, is removed. Ctrl-C and SIGTERM pass as
    they are, after ``partial`` is removed too."""
    try:
        yield
    except BaseException as exc:
        if interrupt_of(exc) is not None:
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        if not isinstance(exc, Exception):
            raise
        raise storage_error(cfg, what, exc, partial=partial) from exc


def checkpoint_if_due(accelerator: Accelerator, cfg: TrainingConfig, step: int, log: TrainingLog,
                      model_config: dict[str, Any]) -> bool:
    """The end of an optimisation step: a checkpoint (with the loss log) every ``checkpointing_steps`` and at the
    last step; True when the run has reached ``max_train_steps``."""
    if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
        save_checkpoint(accelerator, cfg, step, {STATE_FILE: log.state(step), MODEL_CONFIG_FILE: model_config})
        log.save()
    return step >= cfg.max_train_steps


# ---------------------------------------------------------------------------------------------------- Hub
def push_checkpoint(cfg: TrainingConfig, path: str) -> None:
    """Upload the checkpoint folder ``path`` to ``checkpoints/<its name>`` of ``hub_model_id``; with
    ``hub_strategy="checkpoint"`` the older checkpoints leave the repo in the same commit. A failed upload is logged
    and training goes on (the next checkpoint tries again)."""
    name = os.path.basename(os.path.normpath(path))
    try:
        hub.push_folder(
            checkpoint_root(cfg.output_dir), cfg.hub_model_id, path_in_repo=HUB_CHECKPOINTS, private=cfg.hub_private,
            allow_patterns=[f"{name}/*"], commit_message=f"Training checkpoint {name}",
            delete_patterns=[f"{CHECKPOINT_PREFIX}*"] if cfg.hub_strategy == "checkpoint" else None,
        )
    except Exception as exc:  # noqa: BLE001 - a network failure must not end a long run; the model is safe on disk
        logger.warning("could not push %s to %s: %s", name, cfg.hub_model_id, exc)


def card_training_info(cfg: TrainingConfig, step: int, results: dict[str, float]) -> dict[str, Any]:
    """The training table of a trained model's card: data, steps, batch, learning rate, precision, and ``results``
    (e.g. final loss, validation accuracy) rounded for reading."""
    batch = cfg.train_batch_size * cfg.gradient_accumulation_steps
    info: dict[str, Any] = {"training data": f"`{cfg.train_data}`", "optimisation steps": step,
                            "batch (per process x accumulation)": batch, "learning rate": cfg.learning_rate,
                            "mixed precision": cfg.mixed_precision}
    info.update({name: f"{value:.4g}" for name, value in results.items() if value is not None})
    return info


def card_datasets(cfg: TrainingConfig) -> list[str] | None:
    """The Hub datasets a run trained on (for the model card's metadata)."""
    dataset = hub.hub_id(cfg.train_data)
    return [dataset] if dataset else None


def download_hub_checkpoint(cfg: TrainingConfig) -> str | None:
    """Download the newest ``checkpoints/checkpoint-<step>`` of ``hub_model_id`` into ``output_dir/checkpoints``;
    returns its local folder, or None when the repo holds no checkpoint. An unknown repository or a failed download
    raises one line ([`TrainingConfigError`], [`HubUnavailableError`])."""
    from huggingface_hub.errors import RepositoryNotFoundError  # deferred: only resuming from the Hub needs it

    pattern = re.compile(rf"^{HUB_CHECKPOINTS}/{CHECKPOINT_PREFIX}(\d+)/")
    try:
        files = HfApi().list_repo_files(cfg.hub_model_id)
        steps = sorted({int(m.group(1)) for f in files if (m := pattern.match(f))})
        if not steps:
            logger.info("no checkpoint in %s: starting from scratch", cfg.hub_model_id)
            return None
        name = f"{CHECKPOINT_PREFIX}{steps[-1]}"
        snapshot_download(cfg.hub_model_id, allow_patterns=[f"{HUB_CHECKPOINTS}/{name}/*"], local_dir=cfg.output_dir)
    except RepositoryNotFoundError:
        raise TrainingConfigError(f"resume_from_checkpoint=hub: no repository {cfg.hub_model_id} on the Hub (or a "
                                  "private one: log in with `hf auth login`)") from None
    except Exception as exc:  # noqa: BLE001 - the connection failed (httpx errors are no OSErrors): one line
        first = first_line(exc)
        raise HubUnavailableError(f"resume_from_checkpoint=hub: cannot download the newest checkpoint of "
                                  f"{cfg.hub_model_id} ({type(exc).__name__}: {first})") from None
    logger.info("downloaded %s from %s", name, cfg.hub_model_id)
    return os.path.join(checkpoint_root(cfg.output_dir), name)


def push_result(repo_id: str, folder: str, push: Callable[[], Any]) -> str | None:
    """Run ``push``, the upload of a run's result saved in ``folder`` to ``repo_id``. A failure (the network dropped
    during the run) does not lose the run: it is logged as one error saying where the result is and how to upload it
    later, and returned as its message (None after a successful upload)."""
    try:
        push()
    except Exception as exc:  # noqa: BLE001 - any failure to upload: the result is safe on disk
        first = first_line(exc)
        message = (f"could not push {folder} to {repo_id} ({type(exc).__name__}: {first}); the run is complete and "
                   f"saved in {folder}: upload it later with `hf upload {repo_id} {folder}`")
        logger.error("%s", message)
        return message
    return None


# ---------------------------------------------------------------------------------------------------- interrupts
class TrainingInterrupted(RunInterrupted):
    """Ctrl-C or SIGTERM stopped a run: a [`RunInterrupted`] (a ``KeyboardInterrupt``) whose message says how far
    the run got, what is saved and how to continue.

    Attributes:
        step: the last optimisation step that finished (None: stopped before the first step of this run).
        checkpoint: the newest complete checkpoint in ``output_dir`` (None when there is none).
    """

    def __init__(self, signum: int, cfg: TrainingConfig, step: int | None):
        super().__init__(signum)
        self.step = step
        found = list_checkpoints(cfg.output_dir)
        self.checkpoint = found[-1] if found else None
        self.args = (stop_message(self.signal_name, cfg, step, self.checkpoint),)

    def __str__(self) -> str:
        return self.args[0]


def stop_message(signal_name: str, cfg: TrainingConfig, step: int | None, checkpoint: str | None) -> str:
    """One line after a stopped run: how far it got (``step``: the last finished step, None before the first), its
    newest ``checkpoint`` and how to continue."""
    where = (f"after step {step} of {cfg.max_train_steps}" if step is not None
             else "before its first step (while loading models and data)")
    if checkpoint is None:
        used = os.path.isdir(cfg.output_dir) and os.listdir(cfg.output_dir) and not cfg.resume_from_checkpoint
        again = "run the same command again" + (
            f" with overwrite_output_dir=true ({cfg.output_dir} holds the stopped run)" if used else "")
        saved = (f"no checkpoint was saved yet (the first at step {cfg.checkpointing_steps})" if step is not None
                 else "nothing was trained")
        return f"stopped by {signal_name} {where}; {saved}: {again}"
    saved_step = checkpoint_step(checkpoint)
    redo = ""
    if step is not None and step > saved_step:
        redo = (f" (step {step} is trained again)" if step == saved_step + 1
                else f" (steps {saved_step + 1}-{step} are trained again)")
    return (f"stopped by {signal_name} {where}; the last checkpoint is {os.path.basename(checkpoint)} in "
            f"{checkpoint_root(cfg.output_dir)}: resume with resume_from_checkpoint=latest{redo}")


@contextlib.contextmanager
def reporting_stop(cfg: TrainingConfig, log: TrainingLog, accelerator: Accelerator | None = None) -> Iterator[None]:
    """Within the block (a trainer's loop and final save), Ctrl-C or SIGTERM (a ``KeyboardInterrupt``, see
    [`latentsync.interrupts.stop_on_signals`]) becomes a [`TrainingInterrupted`] naming the last finished step
    (``log.step``) and the newest checkpoint; the trackers are closed first so that their logs are complete."""
    try:
        yield
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        interrupt = interrupt_of(exc)
        if interrupt is None:
            raise
        if accelerator is not None:
            with contextlib.suppress(Exception):
                accelerator.end_training()
        raise TrainingInterrupted(signal_number(interrupt), cfg, log.step) from None


# ---------------------------------------------------------------------------------------------------- training log
def empty_history() -> dict[str, list]:
    """The history of a run that has not started: ``train_step`` and ``val_step`` plus one list per logged value
    (``train_loss``, ``train_recon``, ..., ``val_loss``, ``val_accuracy``, ``val_video``)."""
    return {"train_step": [], "train_loss": [], "val_step": []}


class TrainingLog:
    """How a run reports its progress, the same for both trainers.

    Every optimisation step: one JSON line in ``output_dir/losses.jsonl`` (``{"step", <loss names>, "lr"}``), the
    trackers (``train/<name>``, TensorBoard in ``output_dir/logging_dir``) and, every ``logging_steps`` and at the
    last step, a loss line in the log. Validations go to the history (``val_<name>``), the trackers and the log.
    [`save`] writes ``history.json`` and ``loss_chart.png``. Only the main process writes files.
    """

    def __init__(self, accelerator: Accelerator, cfg: TrainingConfig, title: str,
                 reference_lines: dict[str, tuple[float, str]] | None = None):
        self.accelerator, self.title = accelerator, title
        self.output_dir, self.max_steps, self.logging_steps = cfg.output_dir, cfg.max_train_steps, cfg.logging_steps
        self.reference_lines = reference_lines or {}
        self.enabled = accelerator.is_main_process
        self.path = os.path.join(cfg.output_dir, LOSS_LOG)
        self.history = empty_history()
        self.step: int | None = None  # the last step logged or restored (None before the first)
        self._clock: tuple[float, int] | None = None

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint keeps of the log (``training_state.json``)."""
        return {"global_step": step, "history": self.history}

    def restore(self, checkpoint: str | None, step: int) -> None:
        """Continue after resuming from ``checkpoint`` (at ``step``; None: a fresh start in a used folder): the
        history saved with it (or the one ``losses.jsonl`` gives), and the loss lines logged after it dropped."""
        self.step = step if checkpoint else None
        if self.enabled and os.path.isfile(self.path):
            rows = []
            with open(self.path) as fh:
                for line in fh:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:  # a line cut short (a full disk, a kill while writing): its step is redone
                        logger.warning("dropping an incomplete line of %s: %.60s", self.path, line.strip())
            rows = [r for r in rows if r["step"] <= step]
            with open(self.path, "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        else:
            rows = []
        state = read_training_state(checkpoint) if checkpoint else None
        if state is not None:
            self.history = state["history"]
        else:  # checkpoints of earlier versions: rebuild the train losses from the log
            for r in rows:
                self._append("train", r["step"], {k: v for k, v in r.items() if k != "step"})

    def start(self, step: int) -> None:
        """Mark the start of the loop (for the seconds per step of the loss lines)."""
        self._clock = (time.time(), step)

    def _append(self, kind: str, step: int, values: dict[str, Any]) -> None:
        h = self.history
        n = len(h[f"{kind}_step"])
        h[f"{kind}_step"].append(step)
        for key, value in values.items():
            if key == "lr":
                continue
            column = h.setdefault(f"{kind}_{key}", [None] * n)
            column.extend([None] * (n - len(column)))
            column.append(value)

    def log_train(self, step: int, values: dict[str, float]) -> None:
        """Record one optimisation step's losses (and ``lr``)."""
        self.step = step
        self._append("train", step, values)
        self.accelerator.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")
        if step % self.logging_steps == 0 or step == self.max_steps:
            terms = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in ("loss", "lr"))
            speed = ""
            if self._clock is not None and step > self._clock[1]:
                speed = f", {(time.time() - self._clock[0]) / (step - self._clock[1]):.2f} s/step"
            logger.info("step %d/%d: loss %.4f%s, lr %.3g%s", step, self.max_steps, values["loss"],
                        f" ({terms})" if terms else "", values.get("lr", float("nan")), speed)

    def log_validation(self, step: int, values: dict[str, Any], note: str = "") -> None:
        """Record a validation (numbers go to the trackers as ``val/<name>``, everything to the history)."""
        self._append("val", step, values)
        numbers = {f"val/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        if numbers:
            self.accelerator.log(numbers, step=step)
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        logger.info("step %d: validation %s%s", step, shown, f" ({note})" if note else "")

    def save(self) -> None:
        """Write ``history.json`` and ``loss_chart.png`` (main process)."""
        if not self.enabled:
            return
        with open(os.path.join(self.output_dir, HISTORY_FILE), "w") as fh:
            json.dump(self.history, fh)
        plot_history(os.path.join(self.output_dir, LOSS_CHART), self.history, self.title, self.reference_lines)


def read_training_state(checkpoint: str) -> dict[str, Any] | None:
    """``{"global_step", "history"}`` saved in a checkpoint (None for checkpoints without it)."""
    return read_json(os.path.join(checkpoint, STATE_FILE))


def plot_history(path: str, history: dict[str, list], title: str,
                 reference_lines: dict[str, tuple[float, str]] | None = None) -> str:
    """Write a PNG of a run's history: the train loss per step with its moving mean (and the validation loss), the
    individual loss terms when there are several, and each other validation figure. ``reference_lines`` maps a
    figure (``"loss"``, ``"accuracy"``) to a ``(value, label)`` line drawn across its panel."""
    import matplotlib  # deferred: optional (train extra) and slow to import; only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: see above

    reference_lines = reference_lines or {}

    def numeric(key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of a history column that are finite numbers."""
        steps = history[f"{key.split('_')[0]}_step"]
        return [(s, v) for s, v in zip(steps, history[key])
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]

    terms = [k for k in history if k.startswith("train_") and k not in ("train_step", "train_loss") and numeric(k)]
    terms = terms if len(terms) > 1 else []  # one term is the loss itself
    # other validation figures, one panel per kind: "accuracy" holds accuracy, positive_accuracy, negative_accuracy
    val_panels: dict[str, list[str]] = {}
    for key in history:
        if key.startswith("val_") and key not in ("val_step", "val_loss") and numeric(key):
            val_panels.setdefault(key.rsplit("_", 1)[-1], []).append(key)
    panels = 1 + bool(terms) + len(val_panels)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    train = numeric("train_loss") if "train_loss" in history else []
    if train:
        steps, values = zip(*train)
        ax.plot(steps, values, lw=0.8, alpha=0.5, label="train loss (step)")
        k = max(1, len(values) // 50)
        if k > 1:
            kernel = torch.ones(1, 1, k) / k
            smooth = torch.nn.functional.conv1d(torch.tensor(values, dtype=torch.float32)[None, None], kernel)
            ax.plot(steps[k - 1 :], smooth[0, 0].tolist(), lw=1.5, label=f"train loss (mean of {k})")
    if "val_loss" in history and numeric("val_loss"):
        ax.plot(*zip(*numeric("val_loss")), "o-", lw=1.5, label="validation loss")
    panels_of = [("loss", ax)]
    ax.set_ylabel("loss")
    if terms:
        ax_terms = axes[0][1]
        for key in terms:
            ax_terms.plot(*zip(*numeric(key)), lw=1, label=key[len("train_"):])
        ax_terms.set_yscale("log")
        ax_terms.set_ylabel("loss terms (unweighted)")
    for i, (kind, keys) in enumerate(val_panels.items()):
        ax_val = axes[0][1 + bool(terms) + i]
        for key in keys:
            ax_val.plot(*zip(*numeric(key)), "o-", label=f"validation {key[len('val_'):].replace('_', ' ')}")
        ax_val.set_ylabel(kind)
        if kind == "accuracy":
            ax_val.set_ylim(0, 1)
        panels_of.append((kind, ax_val))
    for name, panel in panels_of:
        if name in reference_lines:
            value, label = reference_lines[name]
            panel.axhline(value, color="gray", ls="--", lw=0.8, label=label)
    for panel in axes[0]:
        panel.set_xlabel("step")
        if panel.get_legend_handles_labels()[0]:
            panel.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- start summary
def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"


def parameter_table(model: torch.nn.Module, groups: Sequence[tuple[str, Callable[[str], bool]]]) -> list[str]:
    """Lines ``group: N parameters, trains / frozen / x of them train`` (each parameter counted in the first group
    whose test accepts its name; the rest under ``other``), headed by the totals."""
    rows: dict[str, list[int]] = {label: [0, 0] for label, _ in groups}
    rows["other"] = [0, 0]
    for name, param in model.named_parameters():
        label = next((label for label, test in groups if test(name)), "other")
        rows[label][0] += param.numel()
        rows[label][1] += param.numel() if param.requires_grad else 0
    total = sum(r[0] for r in rows.values())
    trained = sum(r[1] for r in rows.values())
    lines = [f"{_millions(total)} parameters, {_millions(trained)} train ({100 * trained / max(total, 1):.1f} %)"]
    width = max(len(label) for label in rows)
    for label, (n, t) in rows.items():
        if n:
            state = "trains" if t == n else "frozen" if t == 0 else f"{_millions(t)} of them train"
            lines.append(f"  {label:<{width}}  {_millions(n):>10}  {state}")
    return lines


def frozen_summary(models: dict[str, torch.nn.Module | None]) -> str:
    """``name 1.23 M (float32), ...`` for the frozen models that are loaded."""
    parts = []
    for name, model in models.items():
        if model is not None:
            params = list(model.parameters())
            dtype = str(params[0].dtype).replace("torch.", "") if params else "-"
            parts.append(f"{name} {_millions(sum(p.numel() for p in params))} ({dtype})")
    return ", ".join(parts) if parts else "none"


def log_training_plan(title: str, lines: Sequence[str]) -> None:
    """Log, at the start of a run, what it will train and on what (one block)."""
    logger.info("***** %s *****\n%s", title, "\n".join(lines))
