"""FreeInit: filters and noise mixing against diffusers' FreeInitMixin, diffuse-back per scheduler."""

import math

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
    ours = reinitialize(clean, initial, fresh, low_pass_filter(5, 8, 8), scheduler, scheduler.timesteps[0])
    assert torch.equal(ours, expected)


def test_reinitialize_frame_dim_cogvideox_layout():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(2)
    initial, clean, fresh = (torch.randn(1, 4, 5, 8, 8, generator=g) for _ in range(3))  # (B, C, T, H, W)
    lpf = low_pass_filter(5, 8, 8)
    ref = reinitialize(clean, initial, fresh, lpf, scheduler, 999)
    swap = lambda z: z.transpose(1, 2)  # (B, T, C, H, W) as CogVideoX keeps latents
    ours = reinitialize(swap(clean), swap(initial), swap(fresh), lpf, scheduler, 999, frame_dim=1)
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
    out = reinitialize(clean, initial, torch.zeros_like(clean), allpass, flow, 1000.0)
    assert torch.allclose(out, (1 - s) * clean + s * initial, atol=1e-5)
    # Euler-ancestral: mixed in variance-preserving form, scaled back by init_noise_sigma
    euler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    euler.set_timesteps(10)
    sigma = float(euler.sigmas[0])
    out = reinitialize(clean, initial, torch.zeros_like(clean), allpass, euler, euler.timesteps[0])
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
