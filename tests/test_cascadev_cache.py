"""The registered caches on CascadeV's DiT (tiny preset, 8 Euler-ancestral steps): its hook points (one
block stack, attention sites "full" / "temporal" / "spatial", MLP sites, the step output), what each
method reuses, equality with the uncached run where a method reuses nothing, exact forced schedules, one
state per frame window x tile, sp=2 against one process, and the methods that refuse it."""

from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from videosys.cache import Cache, TeaCacheConfig, register
from videosys.cache.registry import unregister
from videosys.models.cascadev import pipeline as cv
from videosys.models.cascadev.transformer import Mlp, SelfAttention, attention_kind
from videosys.utils.demo_data import make_clip

pytestmark = pytest.mark.usefixtures("one_thread_per_rank")  # conftest: one thread per spawned rank

# the EulerA timesteps of 8 steps: 999, 856.3, 713.6, 570.9, 428.1, 285.4, 142.7, 0 (PAB's window (100, 800)
# holds steps 2 .. 6); the tiny DiT's 4 blocks: strides (1, 2), (4, 1), 3D, (2, 2)
KINDS = ["temporal", "spatial", "full", "spatial"]
TEA_ONE = [1.0, 0.0]  # a TeaCache polynomial: rescale(x) = x


@pytest.fixture(scope="module")
def tiny():
    return cv.CascadeVPipeline.from_config(cv.CascadeVConfig(preset="tiny", progress_bar=False))


@pytest.fixture(scope="module")
def clip():
    return make_clip("red", "circle", "right", num_frames=8, height=64, width=64, seed=3)


@pytest.fixture(scope="module")
def uncached(tiny, clip):
    tiny.set_cache(None)
    return tiny.reconstruct(clip)


def run(pipe, clip, cache, **kwargs):
    pipe.set_cache(cache)
    try:
        return pipe.reconstruct(clip, **kwargs)
    finally:
        pipe.set_cache(None)


@pytest.fixture
def calls(tiny):
    """Counts of attention and MLP forwards in the tiny DiT (what a reused module skips)."""
    counts = Counter()
    handles = [m.register_forward_hook(lambda mod, a, o: counts.update(["attn" if isinstance(mod, SelfAttention)
                                                                       else "mlp"]))
               for m in tiny.transformer.modules() if isinstance(m, (SelfAttention, Mlp))]
    handles.append(tiny.transformer.register_forward_hook(lambda mod, a, o: counts.update(["dit"])))
    yield counts
    for h in handles:
        h.remove()


# ---- hook points ------------------------------------------------------------------------------------
@dataclass
class SitesConfig:
    """Counts the sites and stack passes it sees; reuses nothing."""


class Sites(Cache):
    def __init__(self, config):
        self.config, self.counts, self.shapes = config, Counter(), []

    def stack(self, stack):
        self.counts[f"stack/{stack.num_units}"] += 1
        self.shapes.append(tuple(stack.indicator().shape))
        return stack.rest(*stack.first(*stack.streams))  # a split run equals the whole one

    def module(self, site, compute):
        self.counts[f"{site.kind}/{site.block}/{site.index}"] += 1
        return compute()


def test_hook_points_and_site_kinds(tiny, clip, uncached):
    assert attention_kind(None) == "full" and attention_kind((1, 4)) == "temporal"
    assert attention_kind((4, 1)) == "spatial" and attention_kind((1, 1)) == "full"
    register("cv-sites", SitesConfig, Sites, for_model=lambda models: SitesConfig())
    try:
        tiny.set_cache(SitesConfig())
        out = tiny.reconstruct(clip, num_inference_steps=2)
        sites = tiny.transformer.active_cache("cv-sites")
    finally:
        tiny.set_cache(None)
        unregister("cv-sites")
    assert torch.equal(out.latents, tiny.reconstruct(clip, num_inference_steps=2).latents)  # first + rest = stack
    expected = {"stack/4": 2}
    for i, kind in enumerate(KINDS):
        expected[f"{kind}/{kind}/{i}"] = 2
        expected[f"mlp/{kind}/{i}"] = 2
    assert dict(sites.counts) == expected  # no cross-attention: there is no text
    assert sites.shapes == [(1, 8 * 4 * 4, 96)] * 2  # block 0's modulated input: (B, T * h * w, C)


# ---- each method runs and reuses; with nothing to reuse it equals the uncached run --------------------
REUSING = {  # spec -> (stats key, what it reused)
    "pab": ("pab", lambda s: s["spatial_reused"] == 2 * 3 and s["temporal_reused"] == 3),  # steps 3, 5 / 2, 4, 5
    "fastercache": ("fastercache", lambda s: s["spatial_reused"] == 3 * 3),  # diffusers' window t < 681: 3, 5, 7
    "fbcache-1e9": ("fbcache", lambda s: s["reused_step_indices"] == list(range(1, 8))),
    "easycache-1e9": ("easycache", lambda s: s["reused_step_indices"] == [5, 6]),  # warm-up 5, the last computes
    "taylorseer": ("taylorseer", lambda s: s["forecast_step_indices"] == [3, 4, 5, 6]),  # full 0-2, then 2 + 5k
    "foca": ("foca", lambda s: s["forecast_step_indices"] == [3, 4, 5, 6]),  # TaylorSeer's schedule
    "forecast-i3": ("forecast", lambda s: s["reused_step_indices"] == [4, 5]),  # warm-up 3, every 3rd, last
    "magcache-1e9": ("magcache", lambda s: s["reused_step_indices"] == [2, 3, 4, 6, 7]),  # 20% = 2 steps; K = 3
    "teacache": ("teacache", lambda s: s["reused_step_indices"] == list(range(1, 7))),
}
SPECS = {"magcache-1e9": {"method": "magcache", "threshold": 1e9, "ratios": [1.0] * 8},
         "teacache": {"method": "teacache", "threshold": 1e9, "coefficients": [0.0]}}
EQUAL = ["pab-111", "fastercache-1", "fbcache-0", "easycache-0", "taylorseer-1", "foca-1", "forecast-i1",
         {"method": "magcache", "ratios": [0.9] * 8, "max_skip_steps": 0},
         {"method": "teacache", "threshold": 0.0, "coefficients": TEA_ONE}]


@pytest.mark.parametrize("name", list(REUSING))
def test_method_reuses_and_changes_the_reconstruction(tiny, clip, uncached, name):
    key, check = REUSING[name]
    out = run(tiny, clip, SPECS.get(name, name))
    assert check(out.stats[key]), out.stats[key]
    if name == "teacache":  # a config object with this model's coefficients is taken as given
        spec = TeaCacheConfig(threshold=1e9, coefficients=(0.0,))
        assert torch.equal(run(tiny, clip, spec).latents, out.latents)
    assert torch.isfinite(out.latents).all() and not torch.equal(out.latents, uncached.latents)
    assert out.video.shape == uncached.video.shape


@pytest.mark.parametrize("spec", EQUAL, ids=lambda s: s if isinstance(s, str) else s["method"])
def test_nothing_reused_equals_uncached(tiny, clip, uncached, spec):
    out = run(tiny, clip, spec)
    stats = next(iter(v for k, v in out.stats.items() if isinstance(v, dict)))
    assert not any(v for k, v in stats.items() if "reused" in k or "forecast" in k), stats
    assert torch.equal(out.latents, uncached.latents) and torch.equal(out.video, uncached.video)


# ---- forced schedules compute exactly the predicted modules / blocks / steps ----------------------------
def test_forced_schedules_skip_exactly_the_predicted_compute(tiny, clip, calls):
    run(tiny, clip, "taylorseer-2")  # full steps 0, 1, 2, then 2 + 2k: 4, 6; forecast 3, 5, 7
    assert calls == Counter(dit=8, attn=5 * 4, mlp=5 * 4)
    calls.clear()
    out = run(tiny, clip, "pab-246")  # spatial (3 sites) on steps 3, 5; temporal (block 0) on 2, 3, 5, 6
    assert calls["attn"] == 8 * 4 - 2 * 3 - 4 and calls["mlp"] == 8 * 4
    assert out.stats["pab"]["spatial_reused"] == 6 and out.stats["pab"]["temporal_reused"] == 4
    calls.clear()
    run(tiny, clip, SPECS["teacache"])  # every middle step reuses the stack: blocks on steps 0 and 7 only
    assert calls == Counter(dit=8, attn=2 * 4, mlp=2 * 4)
    calls.clear()
    run(tiny, clip, "fbcache-1e9")  # the first block every step, the other 3 on step 0 only
    assert calls == Counter(dit=8, attn=8 + 3, mlp=8 + 3)
    calls.clear()
    out = run(tiny, clip, "forecast-i2")  # output forecast: the DiT is not called on steps 4 and 6
    assert out.stats["forecast"]["reused_step_indices"] == [4, 6] and calls["dit"] == 6


def test_one_state_per_window_and_tile(tiny, calls):
    """12 frames x 64x96: 2 frame windows x 2 latent tiles = 4 DiT calls a step, each with its own state."""
    wide = cv.CascadeVPipeline(cv.CascadeVConfig(preset="tiny", square=False, progress_bar=False), tiny.transformer,
                               tiny.encoder, tiny.vae, cv.make_scheduler("euler-a"))
    video = make_clip("blue", "square", "up", num_frames=12, height=64, width=96, seed=1)
    ref = run(wide, video, None, size=0)
    out = run(wide, video, {"method": "teacache", "threshold": 0.0, "coefficients": TEA_ONE}, size=0)
    assert torch.equal(out.latents, ref.latents)
    calls.clear()
    wide.set_cache(SPECS["teacache"])
    try:
        out = wide.reconstruct(video, size=0)
        parts = sorted(wide.transformer.active_cache("teacache").branches)
    finally:
        wide.set_cache(None)
    assert parts == [f"frames {f} tile 0,{c}/batch" for f in (0, 4) for c in (0, 4)]
    assert out.stats["teacache"]["reused_steps"] == 6 * 4 and calls["dit"] == 8 * 4  # counts per call
    assert calls["attn"] == 2 * 4 * 4  # blocks on steps 0 and 7 only, in every part
    assert not torch.equal(out.latents, ref.latents) and torch.isfinite(out.latents).all()


# ---- calibration: TeaCache's polynomial and MagCache's ratios for a model without published ones -------------
def test_calibrate_pairs_each_call_with_the_same_part(tiny):
    import numpy as np

    from videosys.cache.calibrate import calibrate
    from videosys.cache.teacache import relative_l1

    video = make_clip("blue", "square", "up", num_frames=12, height=64, width=96, seed=1)
    wide = cv.CascadeVPipeline(cv.CascadeVConfig(preset="tiny", square=False, progress_bar=False), tiny.transformer,
                               tiny.encoder, tiny.vae, cv.make_scheduler("euler-a"))
    seen = []
    handle = wide.transformer.register_forward_hook(
        lambda m, a, out: seen.append((wide.transformer.cache_state, out.detach().clone())))
    try:
        result = calibrate(wide, [video], seeds=[0], progress=False, size=0, num_inference_steps=4)
    finally:
        handle.remove()
    assert len(seen) == 4 * 4 and len(result.x) == len(result.y) == 4 * 3  # 4 parts x 3 step pairs
    last, expected = {}, []
    for state, out in seen:  # each call against the same part's call one step earlier
        if state in last:
            expected.append(float(relative_l1(out, last[state])))
        last[state] = out
    assert np.allclose(result.y, expected, rtol=1e-6) and np.all(result.x > 0)
    out = run(wide, video, {"method": "teacache", "threshold": 0.5, "coefficients": list(result.coefficients)},
              size=0, num_inference_steps=4)
    assert out.stats["teacache"]["computed_steps"] + out.stats["teacache"]["reused_steps"] == 4 * 4


def test_calibrate_script_on_cascadev(tmp_path):
    import json

    from tests.eval_helpers import load_script

    calib, path = load_script("calibrate_teacache"), tmp_path / "cal.json"
    common = ["--model", "cascadev", "--preset", "tiny", "--prompts", "2", "--steps", "4", "--threads", "1"]
    assert calib.main(common + ["--output", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["points"] == 2 * 2 * 3 and len(report["coefficients"]) == 5  # 2 clips x 2 windows x 3 pairs
    assert report["published"] is None and report["prompts"][0].startswith("demo clip")
    assert calib.main(common + ["--method", "magcache", "--output", str(path)]) == 0
    ratios = json.loads(path.read_text())["ratios"]
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    config = cv.CascadeVConfig(preset="tiny", cache={"method": "magcache", "ratios": ratios}, progress_bar=False)
    assert cv.CascadeVPipeline.from_config(config).transformer.active_cache("magcache") is not None


def test_eval_script_compares_caches(tmp_path):
    import json

    from tests.eval_helpers import load_script

    out = tmp_path / "eval.json"
    assert load_script("eval_cascadev").main([
        "--demo-clips", "1", "--demo-frames", "8", "--clips", str(tmp_path / "clips"), "--preset", "tiny",
        "--steps", "4", "--caches", "fbcache-1e9,pab-111", "--threads", "1", "--output", str(out)]) == 0
    rows = {r["cache"]: r for r in json.loads(out.read_text())["caches"]}
    assert list(rows) == ["none", "fbcache-1e9", "pab-111"] and rows["none"]["speedup"] == 1.0
    assert rows["fbcache-1e9"]["stats"]["fbcache"]["reused_steps"] == 3 and rows["fbcache-1e9"]["psnr_uncached"] < 99
    assert rows["pab-111"]["psnr_uncached"] >= 99 and rows["pab-111"]["latent_rel_error"] == 0  # the uncached run
    assert rows["fbcache-1e9"]["latent_rel_error"] > 0
    assert rows["pab-111"]["psnr_input"] == pytest.approx(rows["none"]["psnr_input"])


# ---- refusals: before any compute ---------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("teacache", "published for cascadev: `python scripts/calibrate_teacache.py --model cascadev --preset tiny`"),
    ("teacache-fast", "none are published for cascadev"),
    ({"method": "teacache", "threshold": 0.1}, "rescaling polynomial .* 'coefficients'"),
    ("fastercache-2-3", "runs no classifier-free guidance"),
    # a config object: no default polynomial (another model's) can stand in
    (lambda: TeaCacheConfig(threshold=0.1), "needs the model's polynomial coefficients"),
])
def test_config_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        cv.CascadeVConfig(preset="tiny", cache=spec() if callable(spec) else spec)


@pytest.mark.parametrize("spec, message", [
    ("magcache", "magcache needs this model's magnitude ratios, .* --method magcache --model cascadev"),
    ("skipcache", "Skip-Cache needs a model with Skip-DiT skip branches"),
    ({"method": "fastercache", "uncond": ((-1, 641), 5)}, "CFG-Cache .* needs classifier-free guidance"),
])
def test_pipeline_refuses_before_compute(tiny, spec, message, monkeypatch):
    monkeypatch.setattr(cv.CascadeVPipeline, "encode", lambda *a: pytest.fail("computed"))
    with pytest.raises(ValueError, match=message):
        cv.CascadeVPipeline.from_config(cv.CascadeVConfig(preset="tiny", cache=spec, progress_bar=False))
    with pytest.raises(ValueError, match=message):
        tiny.set_cache(spec)


# ---- entry points: engine (sp=2) and CLI ----------------------------------------------------------------
@pytest.mark.slow
def test_sequence_parallel_cache_equals_single(tiny, clip):
    """sp=2 (a spawned gloo worker): data-dependent decisions (First-Block-Cache's and TeaCache's L1 over both
    ranks' tokens), module reuse and forecasts, and the output forecast match one process."""
    from videosys import CascadeVConfig, VideoSysEngine

    specs = ["fbcache-0.4", {"method": "teacache", "threshold": 0.3, "coefficients": TEA_ONE}, "pab",
             "taylorseer-2", "forecast"]
    refs = [run(tiny, clip, spec, num_inference_steps=6) for spec in specs]
    for ref, name in zip(refs[:2], ("fbcache", "teacache")):  # decisions both ways
        assert ref.stats[name]["reused_steps"] and ref.stats[name]["computed_steps"] > 2
    with VideoSysEngine(CascadeVConfig(preset="tiny", num_gpus=2, progress_bar=False, cache=specs[0])) as engine:
        outs = [engine.reconstruct(clip, num_inference_steps=6)]
        for spec in specs[1:]:
            engine.set_cache(spec)
            outs.append(engine.reconstruct(clip, num_inference_steps=6))
    for spec, out, ref in zip(specs, outs, refs):
        name = spec["method"] if isinstance(spec, dict) else spec.split("-")[0]
        assert out.stats[name] == ref.stats[name], spec
        assert (out.latents - ref.latents).abs().max() <= 1e-4 * max(1.0, float(ref.latents.abs().max())), spec


def test_cli_reconstruct_with_cache(clip, tmp_path, capsys):
    import json

    from videosys.cli import main
    from videosys.utils.video import save_video

    src = save_video(clip, str(tmp_path / "clip.mp4"), fps=8)
    dst = str(tmp_path / "rec.mp4")
    assert main(["reconstruct", "--input", src, "--output", dst, "--preset", "tiny", "--cache", "taylorseer-2",
                 "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["taylorseer"]["forecast_step_indices"] == [3, 5, 7]
    assert main(["reconstruct", "--input", src, "--output", dst, "--preset", "tiny", "--cache", "teacache"]) == 2
    assert "TeaCache coefficients), and none are published for cascadev" in capsys.readouterr().err
