"""The memory planner (core/planner.py) against measured peaks, its weights against analytic counts, and the
offload / quantize mechanisms (core/offload.py) against plain runs."""

import json

import pytest
import torch

from conftest import PROMPT, tiny_config
from videosys.core import planner


def measured_peak(config, tmp_path, decode: bool = True) -> int:
    """The real CPU run's peak: torch.profiler's memory timeline (every tensor it sees, parameters included) over a
    generate() call with the config's steps; the planner never looks at it. decode=False: the VAE is not run."""
    from torch.profiler import ProfilerActivity, profile

    pipeline = config.pipeline_cls.from_config(config)
    if not decode:
        pipeline.decode_video = lambda run, latents: latents
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        if hasattr(pipeline, "plan_input"):  # CascadeV: the blank clip the planner reconstructs
            pipeline.reconstruct(pipeline.plan_input({}))
        else:
            pipeline.generate(PROMPT)
    path = tmp_path / "timeline.json"
    prof.export_memory_timeline(str(path), device="cpu")
    _, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes)


# CogVideoX's VAE decodes with 3D convolutions whose CPU kernel allocates an im2col buffer inside the op (several
# times its output), which no dispatch-level count sees and a CUDA run does not allocate: compared without decode
CASES = [pytest.param("latte", "demo", True, id="latte-demo"),
         pytest.param("cascadev", "tiny", True, id="cascadev-tiny"),
         pytest.param("wan", "tiny", True, id="wan-tiny", marks=pytest.mark.slow),
         pytest.param("cogvideox", "tiny", False, id="cogvideox-tiny-no-decode", marks=pytest.mark.slow)]


@pytest.mark.parametrize("model,preset,decode", CASES)
def test_prediction_within_10_percent_of_measured_peak(model, preset, decode, tmp_path):
    config = tiny_config(model, preset=preset, dtype="fp32", num_inference_steps=2)
    m = planner.measure(config)
    stages = planner.stage_peaks(m, planner.Plan())
    predicted = max(sum(v) for stage, v in stages.items() if decode or stage != "decode")
    measured = measured_peak(config, tmp_path, decode)
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_cache_state_is_counted():
    """TaylorSeer keeps order + 1 factors of every module output it wraps: the denoising stage grows by them."""
    plain = planner.measure(tiny_config("latte", dtype="fp32"))
    cached = planner.measure(tiny_config("latte", dtype="fp32", cache="taylorseer-2-2"))
    assert cached.stages["denoise"] > 1.5 * plain.stages["denoise"]
    assert cached.parts["transformer"].bytes == plain.parts["transformer"].bytes


def t5_encoder_params(vocab, d, inner, ff, layers, heads, buckets, bias_every_layer):
    """T5 v1.1 / UMT5 encoder: shared embedding, per layer q k v o + gated FFN (wi_0, wi_1, wo) + 2 RMSNorms,
    the final norm, relative position bias (layer 0 only in T5, every layer in UMT5)."""
    per_layer = 4 * d * inner + 3 * d * ff + 2 * d
    return vocab * d + layers * per_layer + d + buckets * heads * (layers if bias_every_layer else 1)


def test_full_size_weights_match_analytic_counts():
    from videosys.models.modules import architectures
    from videosys.models.wan.transformer import WanTransformer3DModel, WanTransformerConfig

    with torch.device("meta"):
        t5, umt5 = architectures.t5_xxl_encoder(), architectures.umt5_xxl_encoder()
        wan14 = WanTransformer3DModel(WanTransformerConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40))
    assert planner.Weights.of(t5).numel == t5_encoder_params(32128, 4096, 4096, 10240, 24, 64, 32, False)
    assert planner.Weights.of(umt5).numel == t5_encoder_params(256384, 4096, 4096, 10240, 24, 64, 32, True)
    # Wan blocks: self + cross attention (q k v o with biases, q / k RMSNorms), the cross-attention LayerNorm,
    # the FFN, the 6-way modulation table
    d, f, layers = 5120, 13824, 40
    per_block = 2 * (4 * (d * d + d) + 2 * d) + 2 * d + (d * f + f) + (f * d + d) + 6 * d
    w = planner.Weights.of(wan14)
    assert w.blocks == layers * per_block * 4  # fp32 on meta: 4 bytes a weight
    assert w.largest_block == per_block * 4
    assert abs(w.numel - 14.0e9) / 14.0e9 < 0.03  # the release's "14B"


def test_offloaded_run_equals_plain_one():
    plain = tiny_config("latte", num_inference_steps=3, cache="taylorseer")
    reference = plain.pipeline_cls.from_config(plain).generate(PROMPT).latents
    from videosys.core.engine import build_pipeline

    for offload in ("encoders", "model"):
        config = tiny_config("latte", num_inference_steps=3, cache="taylorseer", offload=offload)
        out = build_pipeline(config).generate(PROMPT).latents
        assert torch.equal(out, reference), offload
    from diffusers.utils import is_accelerate_available

    # diffusers' GroupOffloadingHook.pre_forward moves every input with accelerate.utils.send_to_device, whatever
    # the devices or streams (a NameError without accelerate): refused when the config is built
    if not is_accelerate_available():
        with pytest.raises(ValueError, match="needs accelerate"):
            tiny_config("latte", offload="group")
        return
    config = tiny_config("latte", num_inference_steps=3, cache="taylorseer", offload="group")
    assert torch.equal(build_pipeline(config).generate(PROMPT).latents, reference)


def test_int8_weights_run_close_to_fp32():
    from videosys.core.engine import build_pipeline

    config = tiny_config("latte", preset="demo", num_inference_steps=3)
    reference = build_pipeline(config).generate(PROMPT).latents
    out = build_pipeline(tiny_config("latte", preset="demo", num_inference_steps=3, quantize="int8")).generate(
        PROMPT).latents
    error = (out - reference).pow(2).mean() / reference.pow(2).mean()
    assert 0 < error < 5e-3  # relative squared error: int8 rounding, not a broken model (~1)


@pytest.mark.parametrize("fields,match", [
    (dict(offload="model", compile=True, quantize="fp8"), "compile"),
    (dict(quantize="fp8", compile=True), "compile"),
    (dict(offload="model", num_gpus=2), "num_gpus"),
    (dict(offload="disk"), "offload must be"),
    (dict(vram="lots"), "vram must be"),
])
def test_refused_settings(fields, match):
    with pytest.raises(ValueError, match=match):
        tiny_config("latte", **fields)


def test_plan_picks_the_cheapest_that_fits_and_refuses_before_compute():
    config = tiny_config("latte", dtype="fp32")
    m = planner.choose(config).measurement  # the measurement the choices below are made from (cached)
    resident = planner.peak(m, planner.Plan())
    assert planner.choose(config, budget=resident).plan == planner.Plan()
    tight = planner.choose(config, budget=resident - 1)
    assert tight.plan is not None and tight.plan != planner.Plan()
    assert planner.peak(m, tight.plan) <= resident - 1
    from videosys.core.engine import VideoSysEngine

    with pytest.raises(ValueError, match="nothing fits"):
        VideoSysEngine(tiny_config("latte", dtype="fp32", vram="0.001MB"))


def test_cli_plan_prints_the_table_and_refuses(capsys):
    from videosys.cli import main

    args = ["plan", "--model", "latte", "--preset", "tiny", "--dtype", "fp32"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "denoise" in out and "transformer" in out and "all resident" in out
    assert main(args + ["--vram", "0.001MB"]) == 2
    assert "nothing fits" in capsys.readouterr().out


@pytest.mark.parametrize("model,request_", [
    pytest.param("wan", {"height": 256, "width": 256, "num_frames": 9}, id="wan-tiles"),
    pytest.param("cogvideox", {}, id="cogvideox")])
def test_replayed_decoder_calls_count_as_running_every_call(model, request_):
    """The VAE's decoder / blend calls replayed by input layout (core/fake_run.py Replays) give the figures of
    running every call: Wan's per-frame causal cache (refilled lists) and tiles with edge shapes, CogVideoX's
    returned cache."""
    config = tiny_config(model, dtype="fp32", num_inference_steps=2)
    fast, slow = planner.measure(config, request_), planner.measure(config, request_, replay=False)
    assert fast.tiles.keys() == slow.tiles.keys() and (fast.tiles or model != "wan")
    for name, value in {**fast.stages, **fast.tiles}.items():
        other = {**slow.stages, **slow.tiles}[name]
        assert value == other, (name, value, other)


def test_plan_picks_the_largest_vae_tile_that_fits_and_the_pipeline_applies_it():
    """The Wan tiny preset at 9x320x320: its VAE can decode in tiles of 256 or 128 px (smaller than the frame)."""
    from videosys.core.engine import build_pipeline

    config = tiny_config("wan", dtype="fp32", num_inference_steps=2, height=320, width=320, num_frames=9)
    m = planner.choose(config).measurement
    assert list(m.tiles) == [256, 128] and max(m.tiles.values()) < m.stages["decode"]
    for tile in m.tiles:
        budget = planner.peak(m, planner.Plan(vae_tile=tile))
        plan = planner.choose(config, budget=budget).plan
        larger = [t for t in m.tiles if t > (plan.vae_tile or 0)]
        assert planner.peak(m, plan) <= budget
        assert all(planner.peak(m, planner.Plan(plan.offload, plan.quantize, t)) > budget for t in larger)
    planned = planner.plan_config(config, planner.Plan(vae_tile=128))
    assert planned.vae_tiling and planned.vae_tile_size == 128
    vae = build_pipeline(planned).vae
    assert (vae.use_tiling, vae.tile_sample_min_height, vae.tile_sample_stride_height) == (True, 128, 96)  # 3/4
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny_config("wan", vae_tiling=True, vae_tile_size=100)
    with pytest.raises(ValueError, match="latte has no VAE tiling"):
        tiny_config("latte", vae_tile_size=128)


def test_generate_with_vram_applies_a_per_call_plan_or_refuses_before_compute():
    """engine.generate(vram=...): the engine as built when it fits; a plan it can switch to for one call (here
    model offload, which on the CPU leaves the values as they are); else refused naming the field to set, or with
    the plan table when nothing fits."""
    from videosys.core.config import RequestError
    from videosys.core.engine import VideoSysEngine

    config = tiny_config("latte", dtype="fp32", num_inference_steps=2)
    m = planner.measure(config)
    model = planner.peak(m, planner.Plan("model"))
    assert planner.peak(m, planner.Plan("encoders")) > model
    vram = f"{model / 2 ** 20:.6f}MB"
    assert planner.plan_call(config, {}, vram) == planner.Plan("model")
    with pytest.raises(RequestError, match="offload='model'") as err:  # spawned ranks: no per-call offload
        planner.plan_call(config, {}, vram, per_call_offload=False)
    assert err.value.field == "offload"
    engine = VideoSysEngine(config)
    hooks = list(engine.pipeline.stage_hooks)
    reference = engine.generate(PROMPT).latents
    assert torch.equal(engine.generate(PROMPT, vram=vram).latents, reference)
    assert engine.pipeline.stage_hooks == hooks
    with pytest.raises(RequestError, match="nothing fits") as err:
        engine.generate(PROMPT, vram="0.001MB")
    assert err.value.field == "vram" and "denoise" in str(err.value)  # the plan table


def test_engine_refuses_a_larger_request_than_the_budget_allows():
    """vram set to the config's own predicted peak: the config's size fits, a 4x larger frame is refused before
    any compute, naming vram."""
    from videosys.core.config import RequestError

    config = tiny_config("latte", dtype="fp32")
    budget = planner.peak(planner.measure(config), planner.Plan())
    planned = tiny_config("latte", dtype="fp32", vram=f"{budget / 2 ** 20:.6f}MB")
    assert planner.plan_call(planned, {"height": 64, "width": 64}, planned.vram) is None  # its own size fits
    with pytest.raises(RequestError, match="vram") as err:
        planner.plan_call(planned, {"height": 128, "width": 128}, planned.vram)
    assert err.value.field == "vram"
