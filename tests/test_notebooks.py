"""The example notebooks run top to bottom on the tiny models (``LATENTSYNC_TINY=1``, no Hub), in a real Jupyter
kernel, and are stored without outputs."""

from __future__ import annotations

import os
import tomllib

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import EXAMPLES, ROOT

NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))


def test_the_four_notebooks_exist_and_are_saved_without_outputs():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_convert_and_push.ipynb", "03_finetune_lora.ipynb",
                         "04_evaluate.ipynb"]
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for name in NOTEBOOKS:
        nb = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} carries outputs"
        assert "TINY =" in code[0].source and f'LATENTSYNC_SOURCE = "{source}"' in code[0].source  # one source URL


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_the_tiny_models(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSYNC_TINY", "1")
    monkeypatch.setenv("LATENTSYNC_WORK", os.fspath(tmp_path / "work"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", os.fspath(tmp_path / "modules"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    # the training notebook runs twice in the same work folder, as a second "Run all" on Colab does
    for _ in range(2 if name == "03_finetune_lora.ipynb" else 1):
        nb = nbformat.read(EXAMPLES / name, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": os.fspath(EXAMPLES)}}).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert errors == []
    assert not (EXAMPLES / "latentsync-work").exists()  # nothing written into the repository


@pytest.mark.parametrize("stale", [True, False])
def test_colab_setup_restarts_when_the_install_replaced_the_loaded_numpy(stale, tmp_path):
    """Colab imports its numpy 2 before the first cell; the install puts in numpy 1 (MediaPipe's), and the stale
    module then broke the first latentsync import. The setup cell (its install part, on a faked Colab with the clone
    already there) now says so and restarts the runtime (SIGKILL, Colab's restart) before any download; with the
    loaded numpy the installed one, it goes on silently."""
    import signal
    import subprocess
    import sys

    (tmp_path / "latentsync").mkdir()  # the clone of an earlier run: no clone, no install
    for name in NOTEBOOKS:
        setup = nbformat.read(EXAMPLES / name, as_version=4).cells[1].source
        install_part = setup[:setup.index("\nREPO = ")]
        installed = "'0.0.1'" if stale else "__import__('numpy').__version__"
        prelude = ("import sys, types, importlib.metadata as md\n"
                   "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
                   "real = md.version\n"
                   f"md.version = lambda n: {installed} if n == 'numpy' else real(n)\n")
        done = subprocess.run([sys.executable, "-c", prelude + install_part], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        if stale:
            assert done.returncode == -signal.SIGKILL, (name, done.stderr)
            assert "numpy 0.0.1 was installed" in done.stdout and "run this cell again" in done.stdout, name
        else:
            assert done.returncode == 0 and done.stdout == "", (name, done.stderr)
