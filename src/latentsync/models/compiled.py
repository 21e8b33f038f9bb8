"""The U-Net step made fast on a GPU: ``torch.compile`` with fixed shapes (optionally CUDA graphs) and FP8 matmuls.

[`CompiledUNetStep`] compiles the U-Net's forward once per input shape. The pipeline keeps shapes fixed (every window
padded to the full length, every batch to the same number of windows, a frame mask always given), so a whole video
runs on one compiled graph. The first call of each shape compiles; its seconds are kept apart in
``compile_seconds`` (the pipeline reports them as the ``compile`` timing, not as denoising), and the compiled graph is
reused by later calls of the same pipeline.

With ``regional=True`` it compiles the U-Net's repeated blocks instead of the whole step (regional compilation): each
ResNet block, spatial transformer and motion module (the classes the U-Net lists in ``_repeated_blocks``) goes
through ``torch.compile`` on its own, and blocks of one class with the same input shapes share one compiled graph, so
compilation costs a few graphs per block class and level instead of one graph of the whole U-Net. The layers between
the blocks (``conv_in``, time embedding, resamplers, ``conv_out``) stay eager.

[`enable_fp8`] quantises the U-Net's linear layers to float8 (torchao, dynamic per-row scales) on GPUs with FP8
tensor cores (compute capability 8.9 and newer: Ada, Hopper, Blackwell).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["CompiledUNetStep", "allow_recompiles", "enable_fp8", "fp8_supported", "repeated_blocks"]

# dynamo's recompile limit counts the graphs of one function (a block class's ``forward``): allow this many U-Net input
# shapes per block, as its default (8) allows 8 input shapes of a whole-step compile
_SHAPES_PER_BLOCK = 8


def repeated_blocks(unet: nn.Module) -> list[nn.Module]:
    """The U-Net's blocks whose class is named in its ``_repeated_blocks`` (diffusers' convention for regional
    compilation), in module order.

    Raises:
        ValueError: the U-Net names no repeated blocks, or none of them is in it.
    """
    names = tuple(getattr(unet, "_repeated_blocks", ()) or ())
    if not names:
        raise ValueError(f"{type(unet).__name__} lists no _repeated_blocks: regional compilation needs them")
    blocks = [m for m in unet.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"none of the repeated blocks {names} is in the {type(unet).__name__}")
    return blocks


def allow_recompiles(graphs_per_function: int) -> None:
    """Raise dynamo's per-function recompile limit to at least ``graphs_per_function`` (never lower it): beyond the
    limit dynamo silently runs new shapes eagerly."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    if getattr(config, name) < graphs_per_function:
        logger.info("raising torch._dynamo.config.%s from %d to %d for the compiled U-Net blocks", name,
                    getattr(config, name), graphs_per_function)
        setattr(config, name, graphs_per_function)
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, graphs_per_function)


class CompiledUNetStep:
    """``unet(sample, t, encoder_hidden_states, frame_mask=...)`` through ``torch.compile``; returns the noise tensor.

    Args:
        unet: a [`~latentsync.models.LatentSyncUNet`].
        mode: ``torch.compile`` mode (None: default; ``"max-autotune-no-cudagraphs"`` tunes kernels longer).
        backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only traces, useful to check graphs).
        cuda_graphs: replay each step as a CUDA graph (``mode="reduce-overhead"``): removes the launch overhead of
            the small kernels; needs CUDA and fixed shapes.
        fullgraph: fail instead of splitting the graph where dynamo cannot trace.
        regional: compile each repeated block ([`repeated_blocks`]) instead of the whole step: a shorter
            compilation, the layers between the blocks eager. The blocks run compiled only inside this step's calls
            (the U-Net called directly, e.g. by DeepCache, stays eager). Not with ``cuda_graphs``.

    Raises:
        RuntimeError: ``cuda_graphs`` without a CUDA GPU.
        ValueError: ``cuda_graphs`` with a ``mode`` that has no CUDA graphs, or with ``regional``.
    """

    def __init__(self, unet: nn.Module, mode: str | None = None, backend: str | Callable = "inductor",
                 cuda_graphs: bool = False, fullgraph: bool = False, regional: bool = False):
        if cuda_graphs and regional:
            raise ValueError("cuda_graphs=True needs the whole U-Net step compiled (the blocks' CUDA graphs would "
                             "overwrite outputs that the eager layers between them still read): use regional=False")
        if cuda_graphs:
            if not torch.cuda.is_available():
                raise RuntimeError("cuda_graphs=True needs a CUDA GPU; compile without CUDA graphs on this machine")
            if mode not in (None, "reduce-overhead", "max-autotune"):
                raise ValueError(f"cuda_graphs=True cannot be combined with mode={mode!r}")
            mode = mode or "reduce-overhead"
        self.unet = unet
        self.cuda_graphs = cuda_graphs
        self.compile_seconds = 0.0
        self.shapes: set[tuple] = set()
        self.regional = regional
        self.blocks: list[nn.Module] = []
        self._swap_lock = threading.Lock()
        if regional:
            self.blocks = repeated_blocks(unet)
            per_class = Counter(type(block) for block in self.blocks)
            allow_recompiles(max(per_class.values()) * _SHAPES_PER_BLOCK)
            # one torch.compile per block; dynamo keeps graphs per code object (the class's forward), so blocks of a
            # class whose inputs have the same shapes share a graph (parameters are graph inputs, not constants)
            self._block_forwards = [torch.compile(block.forward, mode=mode, backend=backend, fullgraph=fullgraph,
                                                  dynamic=False) for block in self.blocks]
            self._forward = self._regional_step
            logger.info("regional compilation of %d U-Net blocks (%s)", len(self.blocks),
                        ", ".join(f"{n} {c.__name__}" for c, n in per_class.items()))
        else:
            self._forward = torch.compile(self._step, mode=mode, backend=backend, fullgraph=fullgraph, dynamic=False)

    def _step(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
              frame_mask: torch.Tensor | None) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=context, frame_mask=frame_mask, return_dict=False)[0]

    def _regional_step(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                       frame_mask: torch.Tensor | None) -> torch.Tensor:
        """The eager U-Net step with each repeated block's ``forward`` replaced by its compiled one for the call (one
        step at a time: a second thread's step would otherwise put the eager blocks back under the first)."""
        with self._swap_lock:
            saved = [block.__dict__.get("forward") for block in self.blocks]
            for block, forward in zip(self.blocks, self._block_forwards):
                block.__dict__["forward"] = forward  # hooks on the block still run, eagerly, around it
            try:
                return self._step(sample, timestep, context, frame_mask)
            finally:
                for block, forward in zip(self.blocks, saved):
                    if forward is None:
                        del block.__dict__["forward"]
                    else:
                        block.__dict__["forward"] = forward

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                 frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=sample.device)
        key = (tuple(sample.shape), sample.dtype, tuple(encoder_hidden_states.shape), frame_mask is None,
               sample.device)
        first = key not in self.shapes
        start = time.perf_counter()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._forward(sample, timestep, encoder_hidden_states, frame_mask)
        if self.cuda_graphs:
            out = out.clone()  # the graph's output buffer is overwritten by the next replay
        if first:
            if sample.device.type == "cuda":
                torch.cuda.synchronize(sample.device)
            self.shapes.add(key)
            self.compile_seconds += time.perf_counter() - start
            logger.info("compiled the U-Net step for input %s in %.1f s", tuple(sample.shape),
                        time.perf_counter() - start)
        return out


def fp8_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has FP8 tensor cores (an NVIDIA GPU of compute capability 8.9 or newer)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)


def enable_fp8(unet: nn.Module) -> int:
    """Quantise the U-Net's linear layers (attention projections, feed-forwards) to float8 with dynamic per-row
    scales (torchao), in place; returns how many layers were converted. Convolutions stay in their dtype.

    Raises:
        RuntimeError: the U-Net is not on a GPU with FP8 tensor cores, or torchao is not installed.
    """
    device = next(unet.parameters()).device
    if not fp8_supported(device):
        raise RuntimeError(f"FP8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                           f"the U-Net is on {device}. Move the pipeline to such a GPU first, or leave FP8 off.")
    try:  # deferred: torchao is an optional GPU extra (pip install "latentsync[gpu]")
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise RuntimeError('FP8 needs torchao: pip install "latentsync[gpu]" (or pip install torchao)') from exc

    def eligible(module: nn.Module, name: str) -> bool:  # FP8 matmuls want both sides a multiple of 16
        return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0

    count = sum(eligible(m, n) for n, m in unet.named_modules())
    quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=eligible)
    return count
