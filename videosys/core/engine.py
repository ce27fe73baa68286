"""VideoSysEngine: the one-call API. Builds a family's pipeline from its config and runs it.

    engine = VideoSysEngine(LatteConfig(preset="tiny"))
    out = engine.generate("a red circle moving to the right", seed=0)
    engine.save_video(out.video[0], "out.mp4")

One process today; with num_gpus > 1 the engine will start one worker per extra GPU and
run generate() on every rank (the parallel-engine issue). Everything a rank needs comes
from the config, so a worker can build the same pipeline from it.
"""

from videosys.core.pipeline import VideoSysOutput
from videosys.utils.video import save_video


class VideoSysEngine:
    def __init__(self, config):
        if config.num_gpus > 1:
            raise NotImplementedError(
                f"num_gpus={config.num_gpus}: multi-process generation is not available yet; use num_gpus=1")
        self.config = config
        self.pipeline = config.pipeline_cls.from_config(config)

    def generate(self, prompt, **kwargs) -> VideoSysOutput:
        return self.pipeline.generate(prompt, **kwargs)

    def save_video(self, video, path: str, fps: int | None = None) -> str:
        return save_video(video, path, fps=fps or self.config.fps)

    def shutdown(self) -> None:
        """Release the pipeline (and, with several processes, the workers)."""
        self.pipeline = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
