#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what benchmarks/gpu_check.sh needs on a bare GPU machine whose Python (3.12,
# x86-64 Linux) already has torch, transformers, accelerate, numpy, opencv, scipy and Pillow: wheels of diffusers,
# scenedetect (+ platformdirs, importlib_metadata) and torchao (FP8), imageio-ffmpeg 0.8.1 with its ffmpeg
# binary xz-compressed (the wheel is 68 MB, over the 64 MiB that may travel; compressed about 48 MB; compressing takes
# a few minutes), and the 8 s demo clip. Everything lands in .whl/ (ignored by git), about 58 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl/site
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl \
    diffusers==0.42.1 scenedetect==0.7.2 platformdirs importlib_metadata torchao==0.17.0
tmp=$(mktemp -d)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    -d "$tmp" imageio-ffmpeg==0.8.1
(cd "$tmp" && $PY -m zipfile -e imageio_ffmpeg-*.whl x)
rm -rf .whl/site/imageio_ffmpeg && cp -r "$tmp/x/imageio_ffmpeg" .whl/site/
rm -f .whl/site/imageio_ffmpeg/binaries/ffmpeg-*
FFMPEG=$(echo "$tmp"/x/imageio_ffmpeg/binaries/ffmpeg-*)
chmod +x "$FFMPEG"
xz -9 -T0 -c "$FFMPEG" > .whl/ffmpeg.xz
# the first 8 s of the demo clip, cut exactly as benchmarks/inference.py --seconds 8 cuts it (its face tracks, saved
# with --save-face-tracks, are benchmarks/data/demo1_8s_face_tracks.npz), with the ffmpeg that travels
SHARED=${SHARED:-../shared/data}
"$FFMPEG" -y -v error -i "$SHARED/demo1_video.mp4" -t 8 -an -c:v libx264 -preset veryfast -crf 20 .whl/demo1_8s.mp4
"$FFMPEG" -y -v error -i "$SHARED/demo1_audio.wav" -t 8 -ac 1 -ar 16000 .whl/demo1_8s.wav
rm -rf "$tmp"
du -sh .whl
