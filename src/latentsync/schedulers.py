"""The noise schedulers of the pipeline: the official DDIM settings and the faster samplers selectable by name.

Importing this module does not import diffusers (nor torch): the command line lists the scheduler names without them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

OFFICIAL_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)
"""DDIM settings of the official ``configs/scheduler_config.json`` (Stable Diffusion's noise schedule)."""


class _SchedulerClasses(Mapping):
    """Scheduler name -> diffusers class, imported on first lookup (the names alone need no diffusers)."""

    def __init__(self, class_names: dict[str, str]):
        self._class_names = class_names

    def __getitem__(self, name: str) -> "type[SchedulerMixin]":
        return getattr(importlib.import_module("diffusers"), self._class_names[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._class_names)

    def __len__(self) -> int:
        return len(self._class_names)


SCHEDULERS: Mapping[str, "type[SchedulerMixin]"] = _SchedulerClasses({
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
})
"""Schedulers selectable by name with [`LatentSyncPipeline.set_scheduler`] (``ddim`` is the official one)."""


def official_scheduler() -> "DDIMScheduler":
    """A new DDIM scheduler with the official settings."""
    return SCHEDULERS["ddim"](**OFFICIAL_SCHEDULER_CONFIG)


def scheduler_by_name(name: str, config: Any) -> "SchedulerMixin":
    """The scheduler called ``name`` (a key of [`SCHEDULERS`]) built from another scheduler's ``config`` (same noise
    schedule)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)
