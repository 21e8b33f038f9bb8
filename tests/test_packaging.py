"""Packaging: the wheel builds, installs into a clean virtual environment and works there (console script, bundled
assets, the extras in its metadata, plain-diffusers loading); the requirement files keep their roles (the Space's
file holds only what the app needs). The full install from the package index, with every extra and without
backtracking, is the slow test at the end (it needs the network)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib

import pytest

from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement_lines(path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _requirement_names(path) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
            for line in _requirement_lines(path) if not line.startswith("-")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    os.fspath(out), os.fspath(ROOT)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("latentsync-*.whl")
    return path


def test_wheel_installs_into_a_clean_venv_and_works(wheel, tmp_path):
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", os.fspath(venv)], check=True, timeout=300)
    python, bindir = venv / "bin" / "python", venv / "bin"
    subprocess.run([os.fspath(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", os.fspath(wheel)],
                   check=True, capture_output=True, timeout=300)
    # the dependencies come from the test environment, added after the clean venv's own site-packages (whose
    # latentsync is the wheel's); the test environment's editable latentsync is not on that path
    site = subprocess.run([os.fspath(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "test-environment.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": os.fspath(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([os.fspath(bindir / "latentsync"), "make-tiny", os.fspath(tmp_path / "tiny")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = f"""
import importlib.metadata as md, json, os, sys
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({os.fspath(tmp_path / "tiny")!r}, trust_remote_code=True)
import latentsync
from latentsync.face.mask import mouth_mask
mouth_mask(64)
print(json.dumps({{"file": latentsync.__file__, "class": type(pipe).__name__,
                   "extras": md.metadata("latentsync").get_all("Provides-Extra"),
                   "requires": md.requires("latentsync"), "urls": md.metadata("latentsync").get_all("Project-URL")}}))
"""
    proc = subprocess.run([os.fspath(python), "-c", check], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["file"].startswith(site)  # the wheel's copy, with its bundled mouth mask
    assert info["class"] == "LatentSyncPipeline"
    assert {"app", "train", "data", "eval", "xformers", "ray", "test", "dev"} <= set(info["extras"])
    requires = " ".join(info["requires"])
    assert "mediapipe==0.10.21" in requires and "jaxlib<0.7.2" in requires and "peft" in requires
    assert not any(r.startswith("gradio") and "extra ==" not in r for r in info["requires"])  # the app is an extra
    assert any(u.startswith("Repository,") for u in info["urls"])


def test_requirement_files_keep_their_roles():
    space = _requirement_names(ROOT / "requirements.txt")
    assert {"gradio", "torch", "diffusers", "mediapipe", "peft"} <= space
    # the Space installs neither test tools nor training, data-preparation or evaluation packages
    assert not space & {"pytest", "playwright", "nbclient", "datasets", "torchmetrics", "tensorboard",
                        "python-speech-features", "imageio"}
    assert not any(line.startswith("-e") for line in _requirement_lines(ROOT / "requirements.txt"))
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev and "-e .[dev]" in dev
    assert "requirements-dev.txt" in (ROOT / "scripts" / "test.sh").read_text()
    # every module the app imports is installed by the Space's requirements (or is the package itself)
    core = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in PYPROJECT["project"]["dependencies"]}
    app_extra = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                 for d in PYPROJECT["project"]["optional-dependencies"]["app"]}
    assert core | app_extra <= space


@pytest.mark.slow
def test_extras_install_from_the_index_into_a_clean_venv_without_backtracking(wheel, tmp_path):
    """Network: the wheel with every user-facing extra, resolved from the index with only torch pinned (to the
    requirements' build) -- the pyproject bounds alone must lead pip straight to a working set."""
    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", os.fspath(venv)], check=True)
    torch_pin = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch=="))
    proc = subprocess.run([os.fspath(venv / "bin" / "pip"), "install", "--no-cache-dir", "--progress-bar", "off",
                           f"latentsync[app,train,data,eval] @ {wheel.as_uri()}", torch_pin],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pip is looking at multiple versions" not in proc.stdout + proc.stderr
    check = subprocess.run([os.fspath(venv / "bin" / "python"), "-c",
                            "import latentsync, gradio, datasets, torchmetrics, scenedetect; import mediapipe; print('ok')"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
