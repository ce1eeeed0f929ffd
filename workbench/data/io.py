"""Video and image files: mp4 written with PyAV (H.264), read with decord (PyAV as fallback); PNG sheets."""
from __future__ import annotations

import io

import contextlib
import math
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from workbench.files import staged_file


class VideoReadError(RuntimeError):
    """A clip could not be decoded; the message names the file."""


VIEW_PX = 192  # tiny clips are shown enlarged by pixel repetition to about this many pixels on their smaller side


def view_scale(H: int, W: int) -> int:
    """The one rule for enlarging tiny clips for viewing (sample mp4s, study sets, the app's Compare tab): the pixel
    repetition that brings the smaller side to about VIEW_PX, keeping both sides even (yuv420p); 1 for clips as
    large or larger."""
    k = max(1, math.ceil(VIEW_PX / min(H, W)))
    return k + 1 if (H * k) % 2 or (W * k) % 2 else k


def write_mp4(path: str | Path, video_THWC: np.ndarray, fps: int = 8, scale: int = 1) -> Path:
    """uint8 (T, H, W, 3) -> H.264 yuv420p mp4 (plays in browsers, decord reads it), written atomically; the same
    frames give the same bytes on any machine (single-threaded, without x264's macroblock tree).

    `scale` > 1 enlarges frames by pixel repetition first, for viewing tiny toy clips (`view_scale`).
    """
    import av
    if scale > 1:
        video_THWC = video_THWC.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T, H, W, _ = video_THWC.shape
    encoded = io.BytesIO()   # encoded in memory: a full disk fails our own write below, never inside PyAV's I/O
    with av.open(encoded, mode="w", format="mp4") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p"
        # byte-stable output (a rebuilt study is byte-identical): one thread, as x264's output depends on its
        # thread count (by default the machine's cores); and no macroblock tree, which single-threaded still gave
        # 2-4 different encodings of one input in 8 runs here (libx264 core 165, PyAV 18.1), none without it
        stream.options = {"crf": "10", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in video_THWC:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    with staged_file(path, kind="mp4") as tmp:   # removed if the write fails (a full disk)
        Path(tmp).write_bytes(encoded.getvalue())
    return path


def read_frames(path: str | Path, indices: list[int] | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of an mp4 (all, or `indices`); VideoReadError if unreadable.

    decord first; PyAV when decord is missing or fails (decord cannot convert frames whose RGB rows
    are not 32-byte aligned, e.g. the toy's 24 px width).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    with _native_stderr_silenced():
        try:
            import decord
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
            idx = list(range(len(vr))) if indices is None else indices
            if idx and max(idx) >= len(vr):
                raise VideoReadError(f"{path}: has {len(vr)} frames, needs {max(idx) + 1}")
            return vr.get_batch(idx).asnumpy()
        except VideoReadError:
            raise
        except Exception:  # ImportError, or decord's DECORDError on files it cannot handle
            return _read_frames_av(path, indices)


@contextlib.contextmanager
def _native_stderr_silenced():
    """FFmpeg and decord print their own lines on file descriptor 2; a VideoReadError says what matters."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_frames_av(path: Path, indices: list[int] | None) -> np.ndarray:
    import av
    try:
        with av.open(str(path)) as box:
            frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    except Exception as e:
        raise VideoReadError(f"{path}: cannot decode ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if indices is not None:
        if indices and max(indices) >= len(frames):
            raise VideoReadError(f"{path}: has {len(frames)} frames, needs {max(indices) + 1}")
        frames = [frames[i] for i in indices]
    if not frames:
        raise VideoReadError(f"{path}: no frames")
    return np.stack(frames)


def contact_sheet(rows: list[np.ndarray], labels: list[str] | None = None, scale: int = 4,
                  gap: int = 2) -> Image.Image:
    """Rows of clips (T, H, W, 3) uint8 -> one image: a row per clip, frames left to right, labels on the left."""
    from PIL import ImageDraw
    T, H, W, _ = rows[0].shape
    label_w = 0 if not labels else 8 + 6 * max(len(s) for s in labels)
    sheet = Image.new("RGB", (label_w + T * (W * scale + gap), len(rows) * (H * scale + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, clip in enumerate(rows):
        y = r * (H * scale + gap)
        for f, frame in enumerate(clip):
            tile = Image.fromarray(frame).resize((W * scale, H * scale), Image.NEAREST)
            sheet.paste(tile, (label_w + f * (W * scale + gap), y))
        if labels:
            draw.text((4, y + H * scale // 2 - 5), labels[r], fill=(0, 0, 0))
    return sheet
