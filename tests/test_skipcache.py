"""Skip-Cache on the tiny Skip-DiT Latte (4 units): the schedule, the units it runs, the fused output,
and refusing a model without skip branches. sp=2 against one process: tests/test_parallel_families.py."""

import pytest
import torch

from conftest import PROMPT, published, tiny_pipeline
from videosys.cache import configs_from_spec
from videosys.cache.skipcache import SkipCacheConfig

RUN = dict(seed=0, num_frames=2, height=32, width=32, num_inference_steps=10)


@pytest.fixture(scope="module")
def skip_pipe():
    return tiny_pipeline("latte", preset="tiny-skip")


def record_units(transformer):
    """Per forward call, the spatial and temporal block indices that ran, in order."""
    calls, handles = [], [transformer.register_forward_pre_hook(lambda m, a: calls.append([]))]
    for kind, blocks in (("s", transformer.transformer_blocks), ("t", transformer.temporal_transformer_blocks)):
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, k=kind, i=i: calls[-1].append(f"{k}{i}")))
    return calls, handles


def test_interval_one_equals_uncached(skip_pipe):
    skip_pipe.set_cache(None)
    ref = skip_pipe.generate(PROMPT, **RUN)
    skip_pipe.set_cache(SkipCacheConfig(interval=1))
    out = skip_pipe.generate(PROMPT, **RUN)
    assert out.stats["skipcache"]["reused_steps"] == 0 and out.stats["skipcache"]["computed_steps"] == 10
    assert torch.equal(out.latents, ref.latents)


def test_published_schedule_runs_exactly_the_predicted_units(skip_pipe):
    """N=2, cache below t=700, reset after t<=50 (the authors' "N2-700-50"), 10 DDIM steps. Hand-worked:
    count 0, 1, 2 run full (t >= 700 or an even count), then odd counts reuse; the step at t=0 is still
    cached (the reset comes after it), as in the authors' loop."""
    skip_pipe.set_cache("skipcache")
    calls, handles = record_units(skip_pipe.transformer)
    try:
        out = skip_pipe.generate(PROMPT, **RUN)
    finally:
        for h in handles:
            h.remove()
    timesteps = [int(t) for t in skip_pipe.scheduler.timesteps]
    assert timesteps == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]  # the tiny scheduler: no offset
    cached = [3, 5, 7, 9]
    full_units = [f"{k}{i}" for i in range(4) for k in "st"]
    assert calls == [["s0", "t0", "s3", "t3"] if step in cached else full_units for step in range(10)]
    stats = out.stats["skipcache"]
    assert stats["reused_step_indices"] == cached and stats["computed_steps"] == 6
    assert stats["units_run"] == 6 * 4 + 4 * 2


def test_forced_schedule_and_branch_two():
    """interval 3 over the whole range with b=2 on a 5-unit model: cached calls run units 0, 1 and 3, 4."""
    from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig

    model = LatteTransformer3DModel(LatteTransformerConfig(
        num_attention_heads=2, attention_head_dim=8, num_layers=5, cross_attention_dim=16, caption_channels=8,
        sample_size=8, skip_connections=True)).eval()
    model.enable_cache(SkipCacheConfig(interval=3, start_timestep=2000, stop_timestep=-1, branch=2))
    timesteps = [999.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0]
    model.cache_begin(timesteps)
    calls, handles = record_units(model)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    outs = []
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            model.cache_step(i, t)
            outs.append(model(x, torch.tensor([int(t)]), text))
    for h in handles:
        h.remove()
    full, short = [f"{k}{i}" for i in range(5) for k in "st"], ["s0", "t0", "s1", "t1", "s3", "t3", "s4", "t4"]
    assert calls == [full, short, short, full, short, short, full]
    # a cached call: units 3, 4 on unit 3's kept input (the last full call's), fused with unit 1's fresh output
    with torch.no_grad():
        model.disable_cache()
        kept = model.run_blocks  # recompute by hand with the model's own pieces
        t_mod, _ = model.adaln_single(torch.tensor([900]), x.dtype)
        context = model.caption_projection(text)
        h = model.pos_embed(x.permute(0, 2, 1, 3, 4).reshape(2, 4, 8, 8)).view(1, 2, 16, 16)
        t0_mod, _ = model.adaln_single(torch.tensor([999]), x.dtype)
        skips0 = {}
        h3 = kept(h, t0_mod, context, None, 2, stop=3, skips=skips0)  # unit 3's input at the full call (t=999)
        skips1 = {}
        kept(h, t_mod, context, None, 2, stop=2, skips=skips1)  # units 0, 1 at t=900
        out = kept(h3, t_mod, context, None, 2, start=3, skips=skips1)
        ref = model(x, torch.tensor([900]), text)  # only for its output head: replace the stack
        model.cache_stack = lambda run, x, indicator, num_units: out
        by_hand = model(x, torch.tensor([900]), text)
        del model.cache_stack
    assert torch.equal(outs[1], by_hand)
    assert not torch.allclose(outs[1], ref)  # and caching changed the output


def test_refuses_a_model_without_skip_branches(tiny_latte):
    with pytest.raises(ValueError, match="skip branches"):
        tiny_latte.set_cache("skipcache")
    tiny_latte.set_cache(None)


def test_names_and_settings():
    (config,) = configs_from_spec("skipcache", published("latte"))
    assert (config.interval, config.start_timestep, config.stop_timestep, config.branch) == (2, 700, 50, 1)
    assert configs_from_spec("skipcache-4", published("latte"))[0].interval == 4
    with pytest.raises(ValueError, match="unknown cache"):
        configs_from_spec("skipcache-fast", published("latte"))
    with pytest.raises(ValueError, match="interval"):
        SkipCacheConfig(interval=0)
    with pytest.raises(ValueError, match="stop_timestep"):
        SkipCacheConfig(start_timestep=50, stop_timestep=700)
