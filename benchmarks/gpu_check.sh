#!/usr/bin/env bash
# The GPU throughput check (issue 15) in one call on a fresh H100/H200, about 8 minutes; prints the README's tables.
#
# Prepare once, where PyPI is reachable:   bash benchmarks/gpu_wheels.sh   (wheels, ffmpeg and the 8 s demo clip in
# .whl/; the clip is cut from ../shared/data/demo1_*, whose face tracks are in benchmarks/data/). Then, through the
# device tool, carrying .whl:              bash benchmarks/gpu_check.sh
# Results also go to $OUT (default /tmp/gpu_check): denoiser.md, denoiser.log, e2e.log, extras.log, warps.log.
# Some parts only: bash benchmarks/gpu_check.sh [denoiser] [e2e] [warps] [extras] (default: all; always in that order;
# each part gets its own time limit, cut to what is left of one 10-minute call).
# The GPU machine's image has no PyAV and no MediaPipe: nothing here needs them (tests/test_imports.py checks that the
# package and the 25 fps path run without PyAV). Before spending GPU time, rehearse the same commands on the CPU with
# the tiny model and that image's package versions (about 5 minutes on 2 cores):
#   DRY_RUN=cpu PYTHON=/path/to/venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS=" ${*:-all} "
want() { [ "$PARTS" = " all " ] || [[ "$PARTS" == *" $1 "* ]]; }
# seconds for a part: its own cap, but no more than what is left of one call of CALL_S seconds (default 580, inside
# the device tool's 10-minute limit) less what later parts keep
CALL_S=${CALL_S:-580}
budget() { local left=$(( (CALL_S * LIMIT) - SECONDS - $2 )); echo $(( left < $1 * LIMIT ? (left > 10 ? left : 10) : $1 * LIMIT )); }
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
DEV=cuda
SIZE=(--resolutions 256 512); SIZE1=(--resolutions 256); E2E_SIZE=(--full-size); STEPS=(); E2E_STEPS=()
WIN=(--windows 1 2 4); CWIN=4; LIMIT=1
if [ "${DRY_RUN:-}" = cpu ]; then  # the same commands, small: tiny model, 64 px, 2 steps, longer time limits
    DEV=cpu SIZE=(--tiny --resolutions 64) SIZE1=(--tiny --resolutions 64) E2E_SIZE=(--resolution 64)
    STEPS=(--steps 2) E2E_STEPS=(--steps 1) WIN=(--windows 1 2) CWIN=2 LIMIT=10
fi
if [ -d .whl ]; then  # a bare GPU machine: install the carried wheels and unpack ffmpeg
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    $PY -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.whl/ffmpeg.xz'), open('/tmp/ffmpeg', 'wb'))"
    chmod +x /tmp/ffmpeg
    export IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg PYTHONPATH="/tmp/site:$PWD/.whl/site:$PWD/src:$PWD/benchmarks"
    VIDEO=.whl/demo1_8s.mp4 AUDIO=.whl/demo1_8s.wav CUT=()
else  # a development machine with the package installed: the same 8 s, cut by the benchmark
    export PYTHONPATH="$PWD/src:$PWD/benchmarks"
    VIDEO=../shared/data/demo1_video.mp4 AUDIO=../shared/data/demo1_audio.wav CUT=(--seconds 8)
fi
echo "## GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no GPU"
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__)"

if want denoiser; then
echo; echo "### Denoiser: 20 DDIM steps with CFG, full-size U-Net (random weights), per 16-frame window"
echo "(naive = 1 window per call, eager, bf16; compiled = torch.compile + fused GroupNorm + channels-last)"
timeout $(budget 330 $((150 * LIMIT))) $PY benchmarks/model_speed.py --throughput --device $DEV "${SIZE[@]}" "${STEPS[@]}" \
    --dtypes bf16 fp16 "${WIN[@]}" --modes eager compiled --compiled-dtypes bf16 --compiled-windows $CWIN --repeats 1 \
    --table "$OUT/denoiser.md" \
    2>&1 | tee "$OUT/denoiser.log" | grep -E '^(\||peak|device|attention)'
fi

if want e2e; then
echo; echo "### End to end: first 8 s of demo1 (1080x1920, 200 frames), 256 px, bf16, full-size random weights"
echo "(face tracks replayed from benchmarks/data: MediaPipe is not installed on the GPU machine)"
timeout $(budget 260 $((25 * LIMIT))) $PY benchmarks/inference.py "${E2E_SIZE[@]}" "${E2E_STEPS[@]}" --device $DEV --dtype bf16 \
    --video "$VIDEO" --audio "$AUDIO" "${CUT[@]}" \
    --face-tracks benchmarks/data/demo1_8s_face_tracks.npz --variants naive overlap+batch4+fused+compiled+warps \
    overlap+batch4+fused+compiled+warps+nvdec+nvenc \
    2>&1 | tee "$OUT/e2e.log" | grep -v -E '^(W0000|I0000)'
fi

if want warps; then
echo; echo "### Alignment and paste-back: OpenCV (CPU) against batched torch warps (GPU), 16 frames of 1080x1920"
timeout $((25 * LIMIT)) $PY benchmarks/warp_speed.py --device $DEV --video "$VIDEO" 2>&1 | tee "$OUT/warps.log" | grep -E '^(\||[0-9])'
fi
if want extras; then
echo; echo "### Extras at 256 px, bf16, 4 windows per call: regional compilation, CUDA graphs and FP8 (drift: relative L2 of the latents)"
timeout $(budget 60 0) $PY benchmarks/model_speed.py --throughput --device $DEV "${SIZE1[@]}" \
    "${STEPS[@]}" --dtypes bf16 --windows $CWIN --modes eager compiled-regional compiled-graphs fp8 --repeats 1 2>&1 | tee "$OUT/extras.log" | grep -E '^(\||peak)'
fi
echo "done"
