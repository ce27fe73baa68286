"""videosys: fast text-to-video generation with diffusion transformers.

Family classes are imported on first use, so `import videosys` stays light.

Process-wide state (everything else lives in a pipeline, a transformer or a cache instance):
- videosys.cache.registry.METHODS: the registered cache methods (one entry per method, set on import);
- videosys.models.modules.embeddings.constant_table's store (_TABLES): position tables, the last 64 kept;
- videosys.models.modules.compile._compiled: one torch.compile wrapper per (class, method), and torch's own
  compile caches behind them (a graph per shape, up to torch's recompile limit);
- videosys.cache.fastercache._low_pass_mask: FasterCache's frequency masks, an lru_cache of the last 8
  (shape, device);
- the memory planner's measurements (core/planner.py _MEASURED, the last 32 config and request pairs) and its
  recorded VAE calls (core/fake_run.py _REPLAYS, the last 4096 call layouts): sizes only, no tensors.
"""

import logging as _logging

# torchao (weight-only int8: the `memory` extra), which diffusers imports when it is installed, logs at import that
# its CUDA kernels do not load on this torch build and that it registers enums the deprecated way, and diffusers
# that torchao's checkpoint tensor types are missing: every process, before anything runs, nothing a user can act
# on (our int8 path uses none of them). Errors still show.
for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from videosys.cache import PABConfig, TeaCacheConfig  # noqa: E402
from videosys.core.engine import VideoSysEngine  # noqa: E402
from videosys.core.pipeline import VideoSysOutput  # noqa: E402
from videosys.utils.video import read_video, save_video  # noqa: E402

_LAZY = {
    "LatteConfig": "videosys.models.latte.pipeline", "LattePipeline": "videosys.models.latte.pipeline",
    "CogVideoXConfig": "videosys.models.cogvideox.pipeline", "CogVideoXPipeline": "videosys.models.cogvideox.pipeline",
    "OpenSoraConfig": "videosys.models.open_sora.pipeline", "OpenSoraPipeline": "videosys.models.open_sora.pipeline",
    "OpenSoraPlanConfig": "videosys.models.open_sora_plan.pipeline",
    "OpenSoraPlanPipeline": "videosys.models.open_sora_plan.pipeline",
    "CascadeVConfig": "videosys.models.cascadev.pipeline", "CascadeVPipeline": "videosys.models.cascadev.pipeline",
    "WanConfig": "videosys.models.wan.pipeline", "WanPipeline": "videosys.models.wan.pipeline",
    "LaVieConfig": "videosys.models.lavie.pipeline", "LaViePipeline": "videosys.models.lavie.pipeline",
}

__all__ = ["VideoSysEngine", "VideoSysOutput", "TeaCacheConfig", "PABConfig", "save_video", "read_video", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videosys' has no attribute {name!r}")
