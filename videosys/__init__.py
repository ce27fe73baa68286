"""videosys: fast text-to-video generation with diffusion transformers."""

from videosys.core.engine import VideoSysEngine
from videosys.core.pipeline import VideoSysOutput
from videosys.models.latte.pipeline import LatteConfig, LattePipeline
from videosys.utils.video import read_video, save_video

__all__ = ["VideoSysEngine", "VideoSysOutput", "LatteConfig", "LattePipeline", "save_video", "read_video"]
