"""Regenerate the bundled sample inputs ``examples/face.mp4`` and ``examples/speech.wav``.

The face is NASA's public-domain portrait of astronaut Eileen Collins (shipped with scikit-image as
``skimage.data.astronaut``), animated with a slow zoom and sway so the face tracker has real motion to follow.
The speech is synthesised with espeak-ng. Needs: ``pip install scikit-image`` and the ``espeak-ng`` program.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import cv2
import imageio_ffmpeg
import numpy as np
from skimage import data

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "Hello! This is a short sample sentence for lip sync."
FPS, SECONDS, SIZE = 25, 3.0, 384


def make_video(path: str) -> None:
    image = data.astronaut()
    n = int(FPS * SECONDS)
    writer = imageio_ffmpeg.write_frames(path, (SIZE, SIZE), fps=FPS, codec="libx264", quality=None,
                                         output_params=["-crf", "23"], macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(n):
        t = i / FPS
        scale = 1.0 + 0.03 * np.sin(2 * np.pi * t / SECONDS)
        angle = 2.0 * np.sin(2 * np.pi * t / 1.5)
        m = cv2.getRotationMatrix2D((225.0, 120.0), angle, scale)
        m[:, 2] += (SIZE / 2 - 225.0, SIZE / 2 - 150.0)
        frame = cv2.warpAffine(image, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def make_speech(path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-s", "150", "-w", raw, TEXT], check=True)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", raw, "-ac", "1", "-ar", "16000",
                        path], check=True)


if __name__ == "__main__":
    make_video(os.path.join(HERE, "face.mp4"))
    make_speech(os.path.join(HERE, "speech.wav"))
