"""The layout of the package: no import cycles, imports inside functions only to defer optional dependencies, and
the deprecated module paths of the re-layout still working (with a warning)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "latentsync"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_time_nodes(tree: ast.Module):
    """The nodes that run when the module is imported: everything but function bodies (and TYPE_CHECKING blocks)."""
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def top_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports when it is imported."""
    found: set[str] = set()
    for node in _import_time_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            # `from package import submodule` imports the submodule; `from module import name` the module
            found.update(submodules if len(submodules) == len(node.names) else {target, *submodules})
    return {m for m in found if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: top_level_imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of its modules, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["latentsync.pipeline"]  # the walk sees the package
    assert "latentsync.loaders.official" in graph["latentsync.pipeline"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_loaders_import_no_pipeline():
    graph = import_graph()
    seen, todo = set(), ["latentsync.loaders"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    assert not {m for m in seen if m.startswith(("latentsync.pipeline", "latentsync.streaming"))}


def test_imports_inside_functions_say_why_they_are_deferred():
    """An import inside a function must defer an optional or heavy dependency and say so (``# deferred: ...``)."""
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    line = lines[inner.lineno - 1]
                    if "# deferred:" not in line and "# deferred:" not in lines[inner.lineno - 2]:
                        unexplained.append(f"{name}:{inner.lineno}: {line.strip()}")
                    if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith(
                            "latentsync")):
                        unexplained.append(f"{name}:{inner.lineno}: imports the package itself: {line.strip()}")
    assert not unexplained, "\n".join(unexplained)


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imports on its own (no hidden dependency on import order, no cycle at run time)."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    names = [n for n in modules() if not n.endswith(("__main__",))]
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code, *names],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


DEPRECATED = {
    "latentsync.audio": "load_audio",
    "latentsync.video_io": "VideoWriter",
    "latentsync.alignment": "FaceAligner",
    "latentsync.face_detection": "FaceDetector",
    "latentsync.mask": "mouth_mask",
    "latentsync.syncnet_audio": "wav2lip_mel",
    "latentsync.conversion": "load_official_pipeline",
    "latentsync.tiny": "build_tiny_pipeline",
    "latentsync.training.tiny": "save_tiny_training_models",
    "latentsync.eval.cli": "register_eval_command",
}


@pytest.mark.parametrize("old", sorted(DEPRECATED))
def test_old_module_paths_still_work_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="latentsync"):
        module = importlib.import_module(old)
    assert callable(getattr(module, DEPRECATED[old]))


def test_moved_names_still_work_with_a_deprecation_warning():
    import latentsync.cli
    import latentsync.data.prepare
    import latentsync.eval
    import latentsync.pipeline
    from latentsync.commands.eval import register_eval_command
    from latentsync.media import SAMPLES_PER_FRAME
    from latentsync.streaming import pingpong_indices
    from latentsync.utils import default_device

    for module, name, new in [(latentsync.pipeline, "pingpong_indices", pingpong_indices),
                              (latentsync.cli, "default_device", default_device),
                              (latentsync.eval, "register_eval_command", register_eval_command),
                              (latentsync.data.prepare, "SAMPLES_PER_FRAME", SAMPLES_PER_FRAME)]:
        with pytest.warns(DeprecationWarning, match=name):
            assert getattr(module, name) is new
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert callable(latentsync.cli.main)  # the console script's entry point: no warning
    with pytest.raises(AttributeError):
        latentsync.pipeline.no_such_name  # noqa: B018


def test_saved_pipelines_find_their_model_classes():
    """model_index.json of pipelines saved before the re-layout names these modules."""
    from latentsync.models.audio_encoder import WhisperAudioEncoder
    from latentsync.models.unet import LatentSyncUNet

    assert LatentSyncUNet.__module__ == "latentsync.models.unet"
    assert WhisperAudioEncoder.__module__ == "latentsync.models.audio_encoder"


def test_the_default_path_runs_without_pyav(tiny_model_dir_64, example_face):
    """PyAV is only needed to keep the input's own timeline: with it missing (as on the CUDA images the GPU
    benchmarks run on) the package imports, hardware decode can be asked for, and 25 fps frames are read."""
    code = """
import sys
sys.modules["av"] = None  # as if not installed: importing it raises ModuleNotFoundError
import latentsync, latentsync.avatar, latentsync.live, latentsync.streaming
from latentsync import LatentSyncPipeline
pipe = LatentSyncPipeline.from_pretrained(sys.argv[1])
pipe.enable_hardware_decode("cuda")
frames = list(pipe._open_video(sys.argv[2], 25))
print(len(frames), frames[0].shape, sys.modules["av"] is not None)
"""
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(tiny_model_dir_64), str(example_face)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-5:] == ["75", "(384,", "384,", "3)", "False"]  # 3 s of the example, no PyAV
