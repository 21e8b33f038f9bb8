"""The README's "Train your own" walkthrough, executed as written: raw videos -> prepare -> SyncNet -> U-Net stage 1
-> stage 2 -> export a checkpoint -> lip-sync -> eval -> LoRA, on tiny models, offline.

The commands are read from the README (between the ``walkthrough`` markers) and run in a scratch folder laid out
like the repository (``train/``, ``examples/`` and ``../shared/data``). In CI (fast) ``../shared/data`` holds 4-s,
540 x 960 cuts of the sample clips, the commands run in this process and the trainers get fewer steps (appended
``key=value`` overrides); with ``-m slow`` the full clips go through ``bash`` exactly as written, and the seconds of
every step are printed (the README's "time here" column). Either way every path the README's table names must exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, ffmpeg

README = ROOT / "README.md"
START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"

# CI: appended to the commands that start with these words (later overrides win), and one text substitution
FAST_OVERRIDES = {
    "python train/train_syncnet.py": ["max_train_steps=2", "train_batch_size=2", "validation_steps=2",
                                      "num_val_samples=4", "preload_clips=false"],
    "python train/train_unet.py": ["max_train_steps=1", "checkpointing_steps=1", "validation_steps=1",
                                   "validation_seconds=0.5", "validation_inference_steps=1"],
    "latentsync --model": ["--steps", "1"],
    "latentsync eval syncnet-acc": ["--num-samples", "4"],
    "latentsync eval sync-conf": ["--max-frames", "40"],
}
FAST_SUBSTITUTIONS = {"--step 5": "--step 1"}


def walkthrough() -> tuple[list[tuple[str, str]], list[str]]:
    """The walkthrough's code blocks as ``(language, text)`` and the paths its table names."""
    text = README.read_text()
    assert START in text and END in text, "README lost its walkthrough markers"
    body = text[text.index(START) + len(START): text.index(END)]
    blocks = re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)
    table = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    paths = [p for line in table for p in re.findall(r"`([^`]+)`", line.split("|")[2])]
    return blocks, paths


def bash_commands(block: str) -> list[str]:
    """Commands of a bash block: comments dropped, backslash continuations joined."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def scratch_repository(tmp: Path, cut_seconds: float | None) -> Path:
    """``tmp/work`` with ``train`` and ``examples`` linked, and ``tmp/shared/data`` holding the sample clips (cut to
    ``cut_seconds`` and halved in size, or linked whole)."""
    work = tmp / "work"
    work.mkdir()
    for name in ("train", "examples"):
        (work / name).symlink_to(ROOT / name)
    data = tmp / "shared" / "data"
    data.mkdir(parents=True)
    for name in ("demo1_video.mp4", "demo2_video.mp4"):
        src = SHARED_DATA / name
        if not src.is_file():
            pytest.skip(f"shared test data not found: {src}")
        if cut_seconds is None:
            (data / name).symlink_to(src)
        else:
            ffmpeg("-i", os.fspath(src), "-t", str(cut_seconds), "-vf", "scale=540:960", "-c:v", "libx264",
                   "-crf", "16", "-c:a", "aac", os.fspath(data / name))
    return work


def run_in_process(command: str) -> int:
    """Run one walkthrough command through the same entry points as its executable, in this process."""
    from accelerate.state import AcceleratorState

    from latentsync.commands import main
    from latentsync.commands.train import train_syncnet_command, train_unet_command

    argv = shlex.split(command)
    AcceleratorState._reset_state(reset_partial_state=False)
    if argv[0] == "latentsync":
        return main(argv[1:])
    if argv[:2] == ["python", "train/train_unet.py"]:
        return train_unet_command(argv[2:])
    if argv[:2] == ["python", "train/train_syncnet.py"]:
        return train_syncnet_command(argv[2:])
    raise AssertionError(f"the walkthrough runs a command this test cannot run in-process: {command}")


def fast(command: str) -> str:
    for old, new in FAST_SUBSTITUTIONS.items():
        command = command.replace(old, new)
    for prefix, extra in FAST_OVERRIDES.items():
        if command.startswith(prefix):
            command += " " + " ".join(shlex.quote(e) for e in extra)
    return command


def check_results(work: Path, paths: list[str]) -> None:
    missing = [p for p in paths if not (work / p).exists()]
    assert not missing, f"the README says these results land here, but they do not exist: {missing}"
    assert list((work / "outputs/unet_tiny_stage1/val_videos").glob("*.mp4"))
    assert list((work / "outputs/unet_tiny_stage2/val_videos").glob("*.mp4"))
    history = json.loads((work / "outputs/unet_tiny_stage2/history.json").read_text())
    assert {"train_loss", "train_recon", "train_sync", "train_lpips", "train_trepa"} <= set(history)
    record = json.loads((work / "outputs/unet_tiny_lora/lora/latentsync_lora.json").read_text())
    assert record["base_model"]["source"] == "outputs/unet_tiny_stage2/pipeline"
    acc = json.loads((work / "outputs/syncnet_acc.json").read_text())
    assert {"positive_accuracy", "negative_accuracy", "warning"} <= set(acc)


def test_walkthrough_says_what_to_install():
    """The walkthrough's commands need the training, data and evaluation packages, which the quick start's install
    (`requirements.txt`, the app's) does not hold: a new user who followed it saw step 1 work for a minute and stop on
    the missing `datasets`. Its introduction names an install whose packages hold what the commands import."""
    import tomllib

    text = README.read_text()
    intro = text[text.index("## Train your own"): text.index(START)]
    found = re.search(r'pip install -e "\.\[([\w,]+)\]"', intro)
    assert found, "the walkthrough does not say which extras to install"
    assert "pip install -r requirements-dev.txt" in intro
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"]]
    for extra in found.group(1).split(","):
        names += project["optional-dependencies"][extra]
    installed = {re.split(r"[<>=\[ ;]", name)[0].lower() for name in names}
    needed = {"datasets", "tensorboard", "matplotlib", "scenedetect", "scipy", "peft", "mediapipe"}
    assert needed <= installed, f"the install the walkthrough names lacks {sorted(needed - installed)}"
    app_only = {re.split(r"[<>=\[ ;]", line)[0].lower()
                for line in (ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert "datasets" not in app_only  # else the quick start's install would do, and the sentence saying not is wrong


def test_readme_walkthrough_fast(tmp_path, monkeypatch, capsys):
    """Every walkthrough command on 4-s cuts, with fewer training steps, in this process."""
    blocks, paths = walkthrough()
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    work = scratch_repository(tmp_path, cut_seconds=4)
    monkeypatch.chdir(work)
    times = []
    for lang, block in blocks:
        if lang == "bash":
            for command in bash_commands(block):
                t0 = time.time()
                assert run_in_process(fast(command)) == 0, command
                times.append((command[:70], time.time() - t0))
        else:
            exec(compile(block, "README walkthrough", "exec"), {})
    assert "was trained on another U-Net" in capsys.readouterr().out  # the python block's refused LoRA
    with capsys.disabled():
        print("\n" + "\n".join(f"{seconds:7.1f} s  {command}" for command, seconds in times))
    check_results(work, paths)


@pytest.mark.slow
def test_readme_walkthrough_as_written(tmp_path):
    """The walkthrough exactly as written, through bash, on the full sample clips; prints the seconds per step."""
    blocks, paths = walkthrough()
    work = scratch_repository(tmp_path, cut_seconds=None)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    times = []
    for lang, block in blocks:
        if lang == "bash":
            for command in bash_commands(block):
                t0 = time.time()
                done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
                assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
                times.append((command[:60], time.time() - t0))
                print(f"{times[-1][1]:7.1f} s  {times[-1][0]}", flush=True)  # as it goes: a long run shows progress
        else:
            t0 = time.time()
            done = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "was trained on another U-Net" in done.stdout
            times.append(("python block", time.time() - t0))
            print(f"{times[-1][1]:7.1f} s  python block", flush=True)
    check_results(work, paths)
