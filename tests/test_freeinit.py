"""FreeInit: filters and noise mixing against diffusers' FreeInitMixin, diffuse-back per scheduler."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
from diffusers.pipelines.free_init_utils import FreeInitMixin

from videosys.core.freeinit import FLOW_NOISE_LEVEL, FreeInitConfig, frequency_mix, low_pass_filter, reinitialize
from videosys.schedulers.rectified_flow import RectifiedFlowScheduler


class _DiffusersFreeInit(FreeInitMixin):
    def __init__(self, scheduler=None):
        self.scheduler = scheduler


@pytest.mark.parametrize("method", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("d_s,d_t,order", [(0.25, 0.25, 4), (0.4, 0.1, 2), (0.1, 0.6, 7)])
def test_filters_equal_diffusers(method, d_s, d_t, order):
    shape = (1, 4, 5, 6, 8)  # (B, C, T, H, W): odd and even sizes
    ref = _DiffusersFreeInit()._get_free_init_freq_filter(shape, "cpu", method, order, d_s, d_t)
    ours = low_pass_filter(5, 6, 8, method, order, d_s, d_t)
    assert torch.equal(ours.expand(shape), ref)


def test_box_filter_by_hand():
    # T=8, H=W=8, d_s=d_t=0.5: box half-widths round(4 * 0.5) = 2 around the centre (4, 4, 4)
    mask = low_pass_filter(8, 8, 8, "box", d_s=0.5, d_t=0.5)
    expected = torch.zeros(8, 8, 8)
    expected[2:6, 2:6, 2:6] = 1
    assert torch.equal(mask, expected)
    assert torch.equal(low_pass_filter(4, 4, 4, "gaussian", d_s=0.0), torch.zeros(4, 4, 4))


def test_frequency_mix_equals_diffusers_and_keeps_low_frequencies():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 4, 6, 8, 8, generator=g), torch.randn(2, 4, 6, 8, 8, generator=g)
    lpf = low_pass_filter(6, 8, 8)
    ref = _DiffusersFreeInit()._apply_freq_filter(x, noise, lpf)
    assert torch.equal(frequency_mix(x, noise, lpf), ref)
    # an all-pass filter returns x, an all-stop one the noise
    assert torch.allclose(frequency_mix(x, noise, torch.ones(6, 8, 8)), x, atol=1e-5)
    assert torch.allclose(frequency_mix(x, noise, torch.zeros(6, 8, 8)), noise, atol=1e-5)


def test_reinitialize_equals_diffusers_ddim():
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    initial, clean = torch.randn(1, 4, 5, 8, 8, generator=g), torch.randn(1, 4, 5, 8, 8, generator=g)
    ref = _DiffusersFreeInit(scheduler)
    ref.enable_free_init(num_iters=2)
    ref._free_init_initial_noise = initial
    expected, _ = ref._apply_free_init(clean, 1, 10, torch.device("cpu"), torch.float32,
                                       torch.Generator().manual_seed(7))
    fresh = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = reinitialize(clean, initial, fresh, low_pass_filter(5, 8, 8), scheduler)
    assert torch.equal(ours, expected)


def test_reinitialize_frame_dim_cogvideox_layout():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(2)
    initial, clean, fresh = (torch.randn(1, 4, 5, 8, 8, generator=g) for _ in range(3))  # (B, C, T, H, W)
    lpf = low_pass_filter(5, 8, 8)
    ref = reinitialize(clean, initial, fresh, lpf, scheduler)
    swap = lambda z: z.transpose(1, 2)  # (B, T, C, H, W) as CogVideoX keeps latents
    ours = reinitialize(swap(clean), swap(initial), swap(fresh), lpf, scheduler, frame_dim=1)
    assert torch.equal(swap(ours), ref)


def test_diffuse_back_rectified_flow_and_euler():
    g = torch.Generator().manual_seed(3)
    initial, clean = torch.randn(1, 4, 3, 4, 4, generator=g), torch.randn(1, 4, 3, 4, 4, generator=g)
    allpass = torch.ones(3, 4, 4)
    # rectified flow: (1 - s) x0 + s noise at the DDPM-t=999 signal-to-noise ratio
    flow = RectifiedFlowScheduler()
    s = FLOW_NOISE_LEVEL
    ab = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    assert (1 - s) / s == pytest.approx(math.sqrt(ab / (1 - ab)), rel=1e-9)
    out = reinitialize(clean, initial, torch.zeros_like(clean), allpass, flow)
    assert torch.allclose(out, (1 - s) * clean + s * initial, atol=1e-5)
    # Euler-ancestral: mixed in variance-preserving form, scaled back by init_noise_sigma
    euler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    euler.set_timesteps(10)
    sigma = float(euler.sigmas[0])
    out = reinitialize(clean, initial, torch.zeros_like(clean), allpass, euler)
    expected = (clean + sigma * initial) / math.sqrt(sigma**2 + 1) * float(euler.init_noise_sigma)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_config_checks_and_schedule():
    with pytest.raises(ValueError, match="iters"):
        FreeInitConfig(iters=0)
    with pytest.raises(ValueError, match="method"):
        FreeInitConfig(method="sharp")
    with pytest.raises(ValueError, match="spatial_stop_frequency"):
        FreeInitConfig(spatial_stop_frequency=1.5)
    fast = FreeInitConfig(iters=3, fast_sampling=True)
    assert [fast.steps(i, 50) for i in range(3)] == [16, 33, 50]  # int(50 / 3 * (i + 1)), as the authors
    assert [FreeInitConfig(iters=3, cache_iters=1).caches_on(i) for i in range(3)] == [True, False, False]


# ---- FreeInit through the pipelines ----------------------------------------------------------------------
from conftest import PROMPT, tiny_config, tiny_pipeline  # noqa: E402
from distributed import assert_same_as_single  # noqa: E402

from videosys import VideoSysEngine  # noqa: E402

# one tiny case per scheduler we ship: DDIM (Latte), DPM (CogVideoX), rectified flow (Open-Sora),
# Euler-ancestral (Open-Sora-Plan v1.2), PNDM (Open-Sora-Plan v1.1); (family, fields, run, frame_dim)
SCHEDULERS = {
    "ddim": ("latte", {}, dict(num_frames=4, height=32, width=32, num_inference_steps=4), 2),
    "dpm": ("cogvideox", dict(scheduler="dpm"), dict(num_frames=9, height=32, width=32, num_inference_steps=4), 1),
    "rectified-flow": ("open-sora", {}, dict(num_frames=17, height=32, width=32, num_inference_steps=4), 2),
    "euler-ancestral": ("open-sora-plan", {}, dict(num_frames=5, height=32, width=32, num_inference_steps=4), 2),
    "pndm": ("open-sora-plan", dict(version="v110"), dict(num_frames=5, height=32, width=32, num_inference_steps=4), 2),
    "ddpm": ("lavie", {}, dict(num_frames=2, height=32, width=32, num_inference_steps=4), 2),  # a UNet, noise per step
}


def _spy_runs(pipeline):
    """Record the latents each sampling run starts from and ends with (pipeline.denoise's input / output)."""
    seen = []
    denoise = pipeline.denoise

    def spy(latents, *args, **kwargs):
        out = denoise(latents, *args, **kwargs)
        seen.append((latents.clone(), out.clone()))
        return out

    pipeline.denoise = spy
    return seen


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_reinitialises_between_runs(name):
    family, fields, run, frame_dim = SCHEDULERS[name]
    plain = tiny_pipeline(family, **fields)
    ref = plain.generate(PROMPT, seed=3, **run)
    one = tiny_pipeline(family, freeinit_iters=1, **fields).generate(PROMPT, seed=3, **run)
    assert torch.equal(one.latents, ref.latents) and "freeinit" not in one.stats  # 1 run = plain sampling

    pipeline = tiny_pipeline(family, freeinit_iters=2, **fields)
    seen = _spy_runs(pipeline)
    out = pipeline.generate(PROMPT, seed=3, **run)
    (first_in, first_out), (second_in, second_out) = seen
    assert torch.equal(first_out.float().cpu(), ref.latents)  # the first run is the plain one
    # the second run starts from the first's clean latents, diffused back and mixed with fresh noise, exactly
    sigma = float(getattr(pipeline.scheduler, "init_noise_sigma", 1.0))
    fresh = torch.randn(first_in.shape, generator=torch.Generator().manual_seed(3 + 1_000_003))
    t, h, w = first_in.shape[frame_dim], *first_in.shape[-2:]
    expected = reinitialize(first_out, first_in.float() / sigma, fresh, low_pass_filter(t, h, w),
                            pipeline.scheduler, frame_dim)
    assert torch.allclose(second_in, expected, atol=1e-6)
    assert torch.isfinite(out.latents).all() and torch.equal(second_out.float().cpu(), out.latents)
    assert [r["steps"] for r in out.stats["freeinit"]["runs"]] == [ref.stats["steps"]] * 2  # model steps (PNDM: 13)


def test_caches_restart_each_run_and_cache_iters_turns_them_off():
    run = dict(num_frames=4, height=32, width=32, num_inference_steps=10)
    pipeline = tiny_pipeline("latte", freeinit_iters=3, freeinit_cache_iters=2, cache="teacache-0.5")
    out = pipeline.generate(PROMPT, seed=0, **run)
    runs = out.stats["freeinit"]["runs"]
    assert [r["teacache"]["computed_steps"] + r["teacache"]["reused_steps"] for r in runs[:2]] == [10, 10]
    assert "teacache" not in runs[2]  # the third run computed every step, uncached
    assert "teacache" in pipeline.transformer.caches  # and the cache is on again for the next generation
    # run 1 alone is a plain cached generation (state began anew): same decisions as a cached run without FreeInit
    cached = tiny_pipeline("latte", cache="teacache-0.5").generate(PROMPT, seed=0, **run)
    assert runs[0]["teacache"] == cached.stats["teacache"]


def test_fast_sampling_steps_and_pndm_warm_up_check():
    pipeline = tiny_pipeline("latte", freeinit_iters=3, freeinit_fast_sampling=True)
    out = pipeline.generate(PROMPT, seed=0, num_frames=4, height=32, width=32, num_inference_steps=9)
    assert [r["steps"] for r in out.stats["freeinit"]["runs"]] == [3, 6, 9]
    v110 = tiny_pipeline("open-sora-plan", version="v110", freeinit_iters=4, freeinit_fast_sampling=True)
    with pytest.raises(ValueError, match="warm-up"):  # the first coarse run would have 1 step, PNDM needs more
        v110.generate(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=4)


def test_config_fields_are_checked():
    with pytest.raises(ValueError, match="method"):
        tiny_config("latte", freeinit_iters=2, freeinit_method="sharp")
    with pytest.raises(ValueError, match="iters"):
        tiny_config("latte", freeinit_iters=0)
    with pytest.raises(ValueError, match="conditioning"):
        tiny_pipeline("open-sora", freeinit_iters=2).generate(PROMPT, num_frames=34, height=32, width=32, loop=2)


@pytest.mark.slow
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)])
def test_parallel_equals_one_process(num_gpus, cfg_parallel):
    run = dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=4)
    fields = dict(freeinit_iters=2, cache="teacache-fast", progress_bar=False)
    ref = VideoSysEngine(tiny_config("latte", **fields)).generate(PROMPT, **run)
    with VideoSysEngine(tiny_config("latte", num_gpus=num_gpus, cfg_parallel=cfg_parallel, **fields)) as engine:
        out = engine.generate(PROMPT, **run)
    assert_same_as_single(out, ref)
    assert out.stats["freeinit"]["runs"][1]["teacache"] == ref.stats["freeinit"]["runs"][1]["teacache"]


# ---- the temporal-consistency measures of scripts/eval_freeinit.py --------------------------------------
from videosys.eval import temporal  # noqa: E402
from videosys.utils import demo_data  # noqa: E402


def _square_video(xs, ys, colour="red", size=32, side=6):
    video = np.full((len(xs), size, size, 3), 255, dtype=np.uint8)  # white background
    for i, (x, y) in enumerate(zip(xs, ys)):
        video[i, y:y + side, x:x + side] = demo_data.COLOURS[colour]
    return video


def test_straightness_colour_and_flicker_by_hand():
    straight = _square_video(xs=[2 + 2 * i for i in range(8)], ys=[10] * 8)
    assert temporal.straightness(straight, "red") == pytest.approx(0.0, abs=1e-9)
    # one frame 3 px off the line y = 10 (others on it): the least-squares line absorbs part of it
    ys = [10] * 8
    ys[4] = 13
    t = np.arange(8.0)
    yc = np.array(ys) + 3.0  # centroid y of a 6-px square starting at y (pixel centres + 0.5)
    fit = np.polyval(np.polyfit(t, yc, 1), t)
    expected = np.sqrt(((yc - fit) ** 2).mean())
    assert temporal.straightness(_square_video([2 + 2 * i for i in range(8)], ys), "red") == pytest.approx(expected)
    assert temporal.colour_stability(straight, "red") == pytest.approx(0.0, abs=1e-9)
    # VBench's score: (255 - mean |frame_{i+1} - frame_i|) / 255
    still = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    still[1] = 51  # frames 0 -> 1 -> 2 change by 51 each: mean difference 51
    assert temporal.temporal_flickering(still) == pytest.approx((255 - 51) / 255)
    assert temporal.temporal_flickering(np.zeros((4, 4, 4, 3), dtype=np.uint8)) == 1.0
