"""Video files: written whole or not at all (temporary file, then rename), read back as uint8."""

import os

import numpy as np
import torch

from videosys.utils.files import atomic_path, check_writable_folder


def to_uint8_frames(video) -> np.ndarray:
    """(T, H, W, 3) uint8, from a uint8 array / tensor or a float one in [0, 1]."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.numpy() if video.dtype == torch.uint8 else (video.float().clamp(0, 1) * 255).round().byte().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be (frames, height, width, 3), got shape {video.shape}")
    if video.dtype != np.uint8:
        video = (np.clip(video.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(video)


def check_video_path(path) -> str:
    """`path` as a str if save_video can write there, else a ValueError naming it: checked before generating,
    so a bad output name costs no compute. It must end in .mp4 (the one format written), must not be a folder,
    and the nearest existing folder above it must take a new file (probed: files.check_writable_folder; missing
    folders are created when the video is written)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"the output path must be a file name ending in .mp4, got {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"output {path!r} is a folder; name a file in it, e.g. {os.path.join(path, 'out.mp4')!r}")
    if os.path.splitext(path)[1].lower() != ".mp4":
        raise ValueError(f"output {path!r}: videos are written as H.264 .mp4 only; use a name ending in .mp4")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), "output", path)
    return path


# ffmpeg decodes text files as video (its tty demuxer renders them as ANSI art): these are not videos
_TEXT_CODECS = {"ansi", "bintext", "xbin", "idf", "text", "subrip", "ass", "mov_text", "webvtt"}


def probe_video(path, what: str = "video") -> str:
    """`path` if it is a video file ffmpeg decodes a frame of, else a ValueError naming it: checked before any
    model work, so a text file or a truncated download is refused at once, not reconstructed as noise."""
    import imageio_ffmpeg

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist")
    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")  # a generator: ffmpeg starts at the first next()
    try:
        meta = next(reader)
        codec = (str(meta.get("codec") or "").replace(",", " ").split() or [""])[0]  # "ansi," / "h264 (High)"
        if codec in _TEXT_CODECS:
            raise ValueError(f"{what} {path!r} is not a video: ffmpeg reads it as text ({codec})")
        next(reader)  # one frame decodes
    except (OSError, RuntimeError, StopIteration) as err:
        reason = "no frame decodes" if isinstance(err, StopIteration) else str(err).splitlines()[0]
        raise ValueError(f"{what} {path!r} is not a video file ffmpeg can read ({reason})") from None
    finally:
        reader.close()
    return path


def probe_image(path, what: str = "image") -> str:
    """`path` if Pillow reads it as an image, else a ValueError naming it (checked before any model work)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{what} {path!r} is not an image file Pillow can read ({err})") from None
    return path


def save_video(video, path: str, fps: int = 8) -> str:
    """Write (T, H, W, 3) frames as H.264 mp4 at `path`; a failure leaves no file behind."""
    import imageio_ffmpeg

    path = check_video_path(path)
    frames = to_uint8_frames(video)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even height and width, got {h}x{w}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with atomic_path(path, ".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                             pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                             output_params=["-movflags", "+faststart"])
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    return path


def read_video(path: str) -> tuple[np.ndarray, float]:
    """(T, H, W, 3) uint8 frames and the fps stored in the file."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3) for buf in reader]
    return np.stack(frames), float(meta["fps"])
