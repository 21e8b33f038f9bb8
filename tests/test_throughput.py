"""GPU-throughput paths, checked on the CPU: several windows per U-Net call, padded windows with a frame mask, the
compiled U-Net step (no recompiles between windows or calls), the launch-light pooled GroupNorm, SDPA in every
attention, channels-last, the FP8 guard, and the torch (GPU-style) alignment warps and paste-back against OpenCV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsync.face.alignment import FaceAligner
from latentsync.media import iter_frames
from latentsync.media.audio import as_samples
from latentsync.models.attention import attention_report
from latentsync.models.compiled import enable_fp8
from latentsync.models.unet import pooled_group_norm
from latentsync.testing import build_tiny_pipeline
from latentsync.window_batch import stack_windows, windows_that_fit

RESOLUTION = 64
WINDOW = 8  # 25 frames -> windows of 8, 8, 8 and 1: a short last window


@pytest.fixture(scope="module")
def pipe():
    p = build_tiny_pipeline(resolution=RESOLUTION)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clip(example_face, example_speech):
    """1 s of the example face (25 frames in memory) and 1 s of speech."""
    frames = np.stack([f for _, f in zip(range(25), iter_frames(example_face, 25))])
    return frames, as_samples(example_speech)[:16000]


def _run(pipe, clip, **kwargs):
    frames, speech = clip
    return pipe(video=frames, audio=speech, num_inference_steps=2, num_frames=WINDOW,
                generator=torch.Generator().manual_seed(0), **kwargs)


def _unet_calls(pipe):
    calls = []
    return calls, pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))


@pytest.fixture(scope="module")
def naive(pipe, clip):
    calls, handle = _unet_calls(pipe)
    try:
        out = _run(pipe, clip, windows_per_batch=1)
    finally:
        handle.remove()
    return out, calls


def _assert_same_frames(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding of the U-Net: at most 1 grey level apart, in a tiny share of the pixels."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("windows", [2, 3])
def test_windows_per_batch_gives_the_same_frames_in_fewer_unet_calls(pipe, clip, naive, windows):
    reference, naive_calls = naive
    assert naive_calls == [2] * 2 * 4  # CFG batch of 2, 2 steps, 4 windows (8, 8, 8, 1 frames)
    calls, handle = _unet_calls(pipe)
    try:
        out = _run(pipe, clip, windows_per_batch=windows)
    finally:
        handle.remove()
    assert len(calls) == 2 * -(-4 // windows)  # ceil(4 / windows) calls per step
    assert calls[0] == 2 * windows
    assert out.num_frames == reference.num_frames == 25
    _assert_same_frames(out.frames, reference.frames)


def test_a_call_looks_the_device_and_dtypes_up_once(pipe, clip, naive, monkeypatch):
    """diffusers' device and dtype lookups walk every module (milliseconds each for the full-size U-Net): a call of 4
    windows does each once, at its start, and gives the frames it gave before; after the call they are live again."""

    from diffusers import DiffusionPipeline, ModelMixin

    lookups = {"device": 0, "vae dtype": 0, "unet dtype": 0}
    device, vae_dtype, model_dtype = DiffusionPipeline._execution_device, type(pipe.vae).dtype, ModelMixin.dtype
    monkeypatch.setattr(DiffusionPipeline, "_execution_device", property(
        lambda self: lookups.__setitem__("device", lookups["device"] + 1) or device.fget(self)))
    monkeypatch.setattr(type(pipe.vae), "dtype", property(
        lambda self: lookups.__setitem__("vae dtype", lookups["vae dtype"] + 1) or vae_dtype.fget(self)))
    unet = pipe.unet  # the U-Net's own forward asks for its dtype once per step: counted through ModelMixin's lookup
    monkeypatch.setattr(ModelMixin, "dtype", property(
        lambda self: (self is unet and lookups.__setitem__("unet dtype", lookups["unet dtype"] + 1))
        or model_dtype.fget(self)))
    out = _run(pipe, clip)
    assert lookups == {"device": 1, "vae dtype": 1, "unet dtype": 1}
    assert np.array_equal(out.frames, naive[0].frames)
    assert pipe._execution_device == torch.device("cpu") and lookups["device"] == 2  # not pinned outside a call
    assert unet.dtype == torch.float32 and lookups["unet dtype"] == 2


def test_windows_per_batch_default_is_one_on_the_cpu_and_checked(pipe, clip):
    assert pipe.windows_per_batch(None) == 1 and pipe.windows_per_batch(3) == 3
    with pytest.raises(ValueError, match="windows_per_batch"):
        _run(pipe, clip, windows_per_batch=0)


def test_stack_windows_pads_short_windows_and_batches():
    cond = [torch.randn(1, 9, f, 4, 4) for f in (8, 3)]
    audio = [torch.randn(f, 5, 6) for f in (8, 3)]
    batch = stack_windows(cond, audio, num_frames=8, batch_size=3)
    assert batch.condition.shape == (3, 9, 8, 4, 4) and batch.audio.shape == (24, 5, 6)
    assert batch.frame_mask.tolist() == [[True] * 8, [True] * 3 + [False] * 5, [True] * 3 + [False] * 5]
    assert torch.equal(batch.condition[1, :, 3:], cond[1][0, :, 2:3].expand(9, 5, 4, 4))  # last frame repeated
    parts = batch.split(torch.arange(3 * 8.0).view(3, 1, 8, 1, 1))
    assert [p.shape[2] for p in parts] == [8, 3]
    single = stack_windows(cond[:1], audio[:1])
    assert single.frame_mask is None and single.condition is cond[0]
    assert windows_that_fit(free_bytes=10 * 2**30, bytes_per_window=2**30) == 8
    assert windows_that_fit(free_bytes=3 * 2**30, bytes_per_window=2**30) == 2
    assert windows_that_fit(free_bytes=2**29, bytes_per_window=2**30) == 1


def test_padded_clip_with_frame_mask_equals_the_unpadded_clip(pipe):
    unet = pipe.unet
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 13, 16, 8, 8), torch.randn(32, 50, 64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :10] = True
    with torch.no_grad():
        short = unet(x[:, :, :10], 500, encoder_hidden_states=ctx.view(2, 16, 50, 64)[:, :10].reshape(20, 50, 64))
        padded = unet(x, 500, encoder_hidden_states=ctx, frame_mask=mask)
        changed = unet(torch.cat([x[:, :, :10], -x[:, :, 10:]], 2), 500, encoder_hidden_states=ctx, frame_mask=mask)
    torch.testing.assert_close(padded.sample[:, :, :10], short.sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(changed.sample[:, :, :10], padded.sample[:, :, :10], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frame_mask must be"):
        unet(x, 500, encoder_hidden_states=ctx, frame_mask=mask[:, :8])


# ---------------------------------------------------------------------------------------------------- compiled
def test_compiled_denoiser_gives_the_same_frames_without_recompiling(pipe, clip, naive):
    graphs = []

    def counting_backend(gm, example_inputs):  # dynamo's graphs, run as traced (inductor takes minutes here)
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    step = pipe.compile_denoiser(backend=counting_backend)
    try:
        first = _run(pipe, clip, windows_per_batch=2)
        compiled_once = len(graphs)
        second = _run(pipe, clip, windows_per_batch=2)
    finally:
        pipe.disable_compiled_denoiser()
        torch._dynamo.reset()
    assert compiled_once >= 1 and len(graphs) == compiled_once  # no recompile for the padded window or next call
    assert len(step.shapes) == 1  # one input shape: the last window and the last batch were padded
    assert first.timings["compile"] > 0 and second.timings["compile"] == 0
    _assert_same_frames(first.frames, naive[0].frames)
    assert np.array_equal(first.frames, second.frames)


def test_regional_compiled_denoiser_gives_the_same_frames_without_recompiling(pipe, clip, naive):
    """Regional compilation (each repeated block compiled on its own): a few graphs, shared by the blocks of a class
    with the same shapes, none more for the padded last window or the next call; the U-Net outside the step (here
    DeepCache's passes) stays eager."""
    graphs, runs = [], [0]

    def counting_backend(gm, example_inputs):  # counts the graphs and how often they run
        graphs.append(gm)

        def run(*args):
            runs[0] += 1
            return gm.forward(*args)

        return run

    torch._dynamo.reset()
    step = pipe.compile_denoiser(backend=counting_backend, regional=True)
    try:
        first = _run(pipe, clip, windows_per_batch=2)
        compiled_once = len(graphs)
        second = _run(pipe, clip, windows_per_batch=2)
        assert all("forward" not in vars(block) for block in step.blocks)  # compiled only within a step
        runs_before = runs[0]
        _run(pipe, clip, windows_per_batch=2, deep_cache_interval=2)
        assert runs[0] == runs_before > 0  # DeepCache's passes ran no compiled block
    finally:
        pipe.disable_compiled_denoiser()
        torch._dynamo.reset()
    kinds = {type(block) for block in step.blocks}
    assert len(kinds) == 3  # ResNet blocks, spatial transformers, motion modules
    # at least one graph per block class, fewer than the blocks (blocks alike share one), no recompiles
    assert len(kinds) <= compiled_once < len(step.blocks) and len(graphs) == compiled_once, (
        compiled_once, len(step.blocks))
    assert len(step.shapes) == 1
    assert first.timings["compile"] > 0 and second.timings["compile"] == 0
    _assert_same_frames(first.frames, naive[0].frames)
    assert np.array_equal(first.frames, second.frames)


def test_regional_compile_raises_the_recompile_limit(pipe):
    """Blocks of one class with different shapes are graphs of one function, which dynamo counts against its
    recompile limit (8 by default; the full-size U-Net has 22 ResNet blocks): past it, it would silently run the
    remaining blocks eagerly. The limit is raised to 8 input shapes per block of the most common class."""
    from latentsync.models.compiled import CompiledUNetStep

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, ctx = torch.randn(2, 13, 4, 8, 8), torch.randn(8, 50, 64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch({limit: 2}), torch.no_grad():
            step = CompiledUNetStep(pipe.unet, backend=counting_backend, regional=True)
            resnets = sum(type(b).__name__ == "ResnetBlock2D" for b in step.blocks)
            assert getattr(torch._dynamo.config, limit) == 8 * resnets
            step(x, torch.tensor(500), ctx, mask)
            resnet_graphs = sum("input_tensor" in str(g.graph) for g in graphs)
    finally:
        torch._dynamo.reset()
    assert resnet_graphs > 2  # more ResNet graphs than the limit it started with: none ran eagerly


def _padded_batch_with_norm(unet, fused: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put ``unet`` in the fused-norm, channels-last layout (or back to the default), and return a CFG batch of 4
    clips of 8 frames, its audio contexts and a frame mask that pads the last two clips."""
    unet.set_fused_norm(fused)
    unet.to(memory_format=torch.channels_last if fused else torch.contiguous_format)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[2:, 5:] = False
    return torch.randn(4, 13, 8, 8, 8), torch.randn(32, 50, 64), mask


@pytest.mark.parametrize("fused", [False, True])
def test_each_regionally_compiled_block_is_one_graph(pipe, fused):
    """Every repeated block traces as one graph without breaks, with and without a frame mask (the mask reaches
    the norms and the temporal attention from the U-Net's state, read inside the block's graph)."""
    from latentsync.models.compiled import repeated_blocks

    unet = pipe.unet
    x, ctx, mask = _padded_batch_with_norm(unet, fused)
    problems: list[str] = []
    explained: set[tuple] = set()

    def explain(block, args, kwargs):  # inside the U-Net's forward, where its frame count and mask are set
        kind = (type(block), unet._frames.mask is None, *(tuple(a.shape) for a in args if torch.is_tensor(a)))
        if kind in explained:  # a block alike (same class and shapes) was explained: it has the same graph
            return
        explained.add(kind)
        torch._dynamo.reset()
        result = torch._dynamo.explain(block.forward)(*args, **kwargs)
        if result.graph_count != 1 or result.graph_break_count != 0:
            reasons = [r.reason.splitlines()[0] for r in result.break_reasons]
            problems.append(f"{type(block).__name__}: {result.graph_count} graphs, {reasons}")

    blocks = repeated_blocks(unet)
    handles = [block.register_forward_pre_hook(explain, with_kwargs=True) for block in blocks]
    try:
        for frame_mask in (None, mask):
            with torch.no_grad():
                unet(x, torch.tensor(500), ctx, frame_mask=frame_mask)
    finally:
        for handle in handles:
            handle.remove()
        torch._dynamo.reset()
        _padded_batch_with_norm(unet, False)
    assert {kind[:2] for kind in explained} == {(type(b), m) for b in blocks for m in (True, False)}
    assert not problems, problems


def test_regional_steps_of_two_threads_take_turns(pipe):
    """The regional step swaps the blocks' ``forward`` for the compiled ones during a step: a second thread's step
    (direct ``denoise`` calls on one pipeline are not serialised) entered while the first was inside, and the first
    to finish put the eager ``forward`` back under the other. Steps now take turns, and nothing is left swapped."""
    import threading

    from latentsync.models.compiled import CompiledUNetStep

    unet = pipe.unet
    step = CompiledUNetStep(unet, backend="eager", regional=True)
    x, ctx, _ = _padded_batch_with_norm(unet, False)
    first, inside, release, order = step.blocks[0], threading.Event(), threading.Event(), []

    def hold(module, args):  # the first thread waits inside its step until released
        order.append(threading.current_thread().name)
        if threading.current_thread().name == "a":
            inside.set()
            release.wait(30)

    handle = first.register_forward_pre_hook(hold)
    try:
        with torch.no_grad():
            a = threading.Thread(target=step, args=(x, 500, ctx), name="a")
            a.start()
            assert inside.wait(60)
            b = threading.Thread(target=step, args=(x, 500, ctx), name="b")
            b.start()
            b.join(1.0)
            assert order.count("b") == 0  # b waits for a's step
            release.set()
            a.join(60)
            b.join(60)
    finally:
        release.set()
        handle.remove()
        torch._dynamo.reset()
    assert order[0] == "a" and "b" in order and not a.is_alive() and not b.is_alive()
    assert all("forward" not in block.__dict__ for block in step.blocks)


def test_cli_compile_regional_reaches_the_pipeline(tiny_model_dir_64, example_face, example_speech, tmp_path,
                                                    monkeypatch):
    from latentsync import LatentSyncPipeline, LatentSyncPipelineOutput
    from latentsync.commands import main

    seen = {}

    def spy(self, **kwargs):
        seen["step"] = getattr(self, "_compiled_step", None)
        return LatentSyncPipelineOutput(frames=None, fps=25.0, path=kwargs["output_path"], num_frames=0,
                                        frames_without_face=0)

    monkeypatch.setattr(LatentSyncPipeline, "__call__", spy)
    code = main(["--model", str(tiny_model_dir_64), "--video", str(example_face), "--audio", str(example_speech),
                 "--output", str(tmp_path / "out.mp4"), "--device", "cpu", "--compile-regional"])
    assert code == 0 and seen["step"] is not None and seen["step"].regional


@pytest.mark.parametrize("command", ["run", "batch", "avatar"])
def test_regional_compile_refuses_cuda_graphs(pipe, tiny_model_dir_64, example_face, example_speech, tmp_path,
                                              caplog, command):
    import logging

    from latentsync.commands import main

    with pytest.raises(ValueError, match="whole U-Net step"):
        pipe.compile_denoiser(cuda_graphs=True, regional=True)
    # every command that loads the model says so in one line, before loading it (batch loaded it, then raised)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"video,audio\n{example_face},{example_speech}\n")
    argv = {"run": ["--video", str(example_face), "--audio", str(example_speech), "--output", str(tmp_path / "o.mp4")],
            "batch": ["batch", str(jobs), str(tmp_path / "out")],
            "avatar": ["avatar", str(example_face), str(tmp_path / "face.avatar")]}[command]
    with caplog.at_level(logging.INFO, logger="latentsync"):
        code = main(argv + ["--model", str(tiny_model_dir_64), "--device", "cpu", "--cuda-graphs",
                            "--compile-regional"])
    assert code == 2 and "--cuda-graphs needs the whole U-Net step compiled" in caplog.text
    assert "loading" not in caplog.text


@pytest.mark.parametrize("fused", [False, True])
def test_compiled_unet_step_is_one_graph(pipe, fused):
    """One graph per U-Net step, with no graph breaks: the fused norm's ``out=`` write and diffusers' dtype lookup
    (a walk over the parameters) each split the graph once per layer, which on an H200 hit dynamo's recompile limit
    and left most of the U-Net eager."""
    from latentsync.models.compiled import CompiledUNetStep

    unet = pipe.unet
    x, ctx, mask = _padded_batch_with_norm(unet, fused)
    step = CompiledUNetStep(unet, backend="eager")
    try:
        for frame_mask in (None, mask):
            torch._dynamo.reset()
            with torch.no_grad():
                explained = torch._dynamo.explain(step._step)(x, torch.tensor(500), ctx, frame_mask)
            reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
            assert explained.graph_count == 1 and explained.graph_break_count == 0, reasons
    finally:
        torch._dynamo.reset()
        _padded_batch_with_norm(unet, False)


def test_step_methods_record_no_gradients(pipe):
    """The pipeline's steps, called one by one as in a hand-written loop, keep no autograd graph: the U-Net's weights
    require gradients, and 20 steps of a full-size window then held every activation (out of memory on an H200)."""
    assert pipe.unet.conv_in.weight.requires_grad
    size = RESOLUTION // pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    noise = pipe.prepare_latents(pipe.unet.dtype, torch.device("cpu"), generator)
    faces = np.full((4, RESOLUTION, RESOLUTION, 3), 128, np.uint8)
    condition = pipe.prepare_condition_latents(faces, generator)
    assert condition.grad_fn is None and noise.grad_fn is None
    ctx = torch.randn(4, 50, pipe.unet.config.cross_attention_dim)
    latents = pipe.denoise(noise, condition, ctx, 2, 1.5)
    assert latents.shape[-2:] == (size, size)
    assert latents.grad_fn is None and not latents.requires_grad
    assert pipe.encode_audio(np.zeros(16000, np.float32)).grad_fn is None


def test_cuda_graphs_and_fp8_need_a_gpu(pipe):
    if torch.cuda.is_available():
        pytest.skip("checks the error on machines without a GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        pipe.compile_denoiser(cuda_graphs=True)
    with pytest.raises(RuntimeError, match="compute capability 8.9"):
        enable_fp8(pipe.unet)


# ---------------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_pooled_group_norm_equals_the_reference(pipe, channels_last):
    torch.manual_seed(0)
    norm = next(m for m in pipe.unet.modules() if type(m).__name__ == "FramePooledGroupNorm")
    x = torch.randn(3 * 5, norm.num_channels, 6, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        ref = x.reshape(3, 5, -1, 42).transpose(1, 2)
        ref = torch.nn.functional.group_norm(ref, norm.num_groups, norm.weight, norm.bias, norm.eps)
        ref = ref.transpose(1, 2).reshape(x.shape)
        fused = pooled_group_norm(x, 5, norm.num_groups, norm.weight, norm.bias, norm.eps)
        half = pooled_group_norm(x.bfloat16(), 5, norm.num_groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(half.float(), ref, rtol=0.02, atol=0.02)
    assert fused.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_fused_norm_and_channels_last_unet_match_the_default(pipe):
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 13, 8, 8, 8), torch.randn(16, 50, 64)
    unet = pipe.unet
    with torch.no_grad():
        ref = unet(x, 500, encoder_hidden_states=ctx).sample
        unet.set_fused_norm(True)
        pipe.enable_channels_last()
        try:
            fast = unet(x, 500, encoder_hidden_states=ctx).sample
        finally:
            unet.set_fused_norm(False)
            unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_every_attention_uses_sdpa(pipe):
    report = attention_report(pipe.unet)
    assert report["all_sdpa"]
    assert report["spatial"] and report["audio"] and report["temporal"]  # the tiny U-Net has all three kinds


# ---------------------------------------------------------------------------------------------------- warps
def test_torch_warps_and_paste_match_opencv_within_one_grey_level(clip):
    from latentsync.face.warp import TorchFaceAligner

    frames = clip[0][:4]
    cpu, gpu_style = FaceAligner(128), TorchFaceAligner(128, device="cpu")
    rng = np.random.default_rng(0)
    matrices = []
    for k in range(len(frames)):  # a face-sized similarity warp, rotated and shifted differently per frame
        angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 0.9)
        m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrices.append(np.hstack([m, (rng.uniform(-160, -60, 2))[:, None]]))
    matrices[-1][:, 2] = (40, 30)  # the last face sticks out of the frame's top-left corner: replicated edge
    aligned = gpu_style.align_batch(frames, matrices)
    expected = np.stack([cpu.align(f, m) for f, m in zip(frames, matrices)])
    assert np.abs(aligned.astype(int) - expected.astype(int)).max() <= 1
    faces = np.ascontiguousarray(expected[::-1, :, ::-1])  # other frames' faces, mirrored: a visible change
    pasted = gpu_style.paste_batch(list(frames), faces, matrices)
    expected = [cpu.paste(f, face, m) for f, face, m in zip(frames, faces, matrices)]
    for a, b, original in zip(pasted, expected, frames):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert not np.array_equal(a, original)  # the mouth region changed


def test_torch_warps_sample_exactly_where_opencv_5_does(clip, monkeypatch):
    """With OpenCV 5 (which samples at the exact source position, no 1/32-pixel rounding) the torch warp is the exact
    bilinear value: within float rounding of a float64 reference, borders replicated."""
    from latentsync.face import warp

    monkeypatch.setattr(warp, "_OPENCV_ROUNDS_POSITIONS", False)
    frame = clip[0][0].astype(np.float64)
    h, w = frame.shape[:2]
    m = 0.7 * np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0]]) + [[0, 0, -50], [0, 0, 20]]
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:96, 0:96].astype(np.float64)
    sx = np.clip(inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], 0, w - 1)
    sy = np.clip(inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2], 0, h - 1)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (sx - x0)[..., None], (sy - y0)[..., None]
    exact = (frame[y0, x0] * (1 - ax) * (1 - ay) + frame[y0, x1] * ax * (1 - ay) + frame[y1, x0] * (1 - ax) * ay
             + frame[y1, x1] * ax * ay)
    images = torch.from_numpy(frame).permute(2, 0, 1)[None]
    out = warp.warp_affine(images, torch.from_numpy(inv)[None], (96, 96))[0].permute(1, 2, 0).numpy()
    assert np.abs(out - exact).max() < 1e-6
    monkeypatch.setattr(warp, "_OPENCV_ROUNDS_POSITIONS", True)  # OpenCV 4's rounding moves it visibly
    rounded = warp.warp_affine(images, torch.from_numpy(inv)[None], (96, 96))[0].permute(1, 2, 0).numpy()
    assert np.abs(rounded - exact).max() > 0.2


def test_pipeline_with_warps_on_device(pipe, clip, naive):
    pipe.enable_warps_on_device()
    try:
        out = _run(pipe, clip, windows_per_batch=1)
    finally:
        pipe.enable_warps_on_device(False)
    reference = naive[0].frames
    changed = np.abs(out.frames.astype(np.int16) - reference.astype(np.int16)).max(-1) > 0
    # the aligned faces differ by at most one grey level, which the model may carry into the new mouths; everything
    # outside the pasted mouth region (where the reference changed the input, a few pixels wider) stays the input
    assert out.frames.shape == reference.shape and changed.mean() < 0.05
    pasted = np.abs(reference.astype(np.int16) - clip[0].astype(np.int16)).max(-1) > 0
    for frame_changed, frame_pasted in zip(changed, pasted):
        ys, xs = np.nonzero(frame_pasted)
        outside = frame_changed.copy()
        outside[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = False
        assert not outside.any()
