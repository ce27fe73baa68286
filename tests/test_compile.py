"""compile=True: the tiny Latte's blocks compiled (branches only), with a module-hook cache and CFG on."""

import pytest
import torch
from torch._dynamo.utils import counters

from videosys import LatteConfig, LattePipeline

RUN = dict(num_frames=4, num_inference_steps=4, seed=1)


def test_compiled_equals_eager_and_never_recompiles():
    # PAB acts at the module hook points around the compiled branches; teacache at the stack
    config = dict(preset="tiny", progress_bar=False, cache=["pab", "teacache-slow"])
    eager = LattePipeline.from_config(LatteConfig(**config))
    compiled = LattePipeline.from_config(LatteConfig(**config, compile=True))
    block = compiled.transformer.transformer_blocks[0]
    assert "attn_branch" in vars(block) and "attn_branch" not in vars(eager.transformer.transformer_blocks[0])
    torch._dynamo.reset()
    counters.clear()
    expected = eager.generate("a red circle", **RUN)
    first = compiled.generate("a red circle", **RUN)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 3  # the branches did compile (one graph per branch kind, shared by every block)
    torch.testing.assert_close(first.latents, expected.latents, rtol=1e-4, atol=1e-4)
    for name in ("pab", "teacache"):  # the same cache decisions
        assert first.stats[name] == expected.stats[name]
    assert first.stats["pab"]["spatial_reused"] > 0
    # a second generation of the same shape (new prompt and seed: new text, new memo) compiles nothing
    second = compiled.generate("a blue square", **{**RUN, "seed": 2})
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(second.latents, eager.generate("a blue square", **{**RUN, "seed": 2}).latents,
                               rtol=1e-4, atol=1e-4)


def test_compile_flag_is_validated():
    with pytest.raises(ValueError, match="compile must be true or false"):
        LatteConfig(preset="tiny", compile="yes")
