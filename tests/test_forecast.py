"""The output forecast (videosys/cache/forecast.py) and the step-output hook point: exact on polynomials,
its schedules, the uncached output where it never skips, and the same decisions and output on sp=2 / cfg=2."""

import pytest
import torch

from videosys import VideoSysEngine
from videosys.cache import configs_from_spec
from videosys.cache.forecast import ForecastConfig, OutputForecast, newton_coefficients

from conftest import PROMPT, published, tiny_config, tiny_pipeline
from distributed import assert_same_as_single

RUN = dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=10)


def drive(cache: OutputForecast, values, num_steps: int):
    """Run the hook over `num_steps` steps whose model output is values(step); returns (outputs, computed steps)."""
    cache.begin([float(1000 - i) for i in range(num_steps)])
    outputs, computed = [], []
    for i in range(num_steps):
        cache.set_step(i, float(1000 - i))
        outputs.append(cache.step_output(lambda: computed.append(i) or values(i)))
    return outputs, computed


def poly(coefficients):
    return lambda s: sum(c * torch.full((2, 3), float(s)) ** k for k, c in enumerate(coefficients))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_newton_forecast_is_exact_on_a_polynomial_of_its_order(order):
    values = poly([0.5, -1.25, 0.375, 0.0625][: order + 1])  # degree `order`
    cache = OutputForecast(ForecastConfig(order=order, interval=3, warmup=order + 1))
    outputs, computed = drive(cache, values, 16)
    assert len(computed) < 16
    for i, out in enumerate(outputs):
        assert torch.allclose(out, values(i), rtol=1e-5, atol=1e-4), (i, out, values(i))
    # one degree more is not exact: the forecast really extrapolates (no hidden compute)
    values = poly([0.5, -1.25, 0.375, 0.0625, 0.01][: order + 2])
    outputs, computed = drive(OutputForecast(ForecastConfig(order=order, interval=3, warmup=order + 1)), values, 16)
    assert max(float((o - values(i)).abs().max()) for i, o in enumerate(outputs)) > 1e-2


def test_divided_differences_on_uneven_steps():
    steps, f = [0, 3, 7], lambda x: 2 - x + 0.5 * x * x
    c = newton_coefficients(steps, [torch.tensor(f(x)) for x in steps])
    x = 12.0  # p(x) = c0 + c1 (x - 7) + c2 (x - 7)(x - 3)
    assert float(c[0] + c[1] * (x - 7) + c[2] * (x - 7) * (x - 3)) == pytest.approx(f(x))
    assert float(c[2]) == pytest.approx(0.5)


def test_taylor_basis_is_taylorseers_first_order_and_damped_at_second():
    linear = poly([1.0, 2.0])
    outputs, _ = drive(OutputForecast(ForecastConfig(order=1, interval=4, basis="taylor")), linear, 12)
    assert all(torch.allclose(o, linear(i)) for i, o in enumerate(outputs))
    quadratic = poly([0.0, 0.0, 1.0])  # s^2 over steps 0 .. 3: factors 9, 5, 2 -> step 4: 9 + 5 + 2/2 = 15 (not 16)
    outputs, computed = drive(OutputForecast(ForecastConfig(order=2, interval=2, basis="taylor")), quadratic, 6)
    assert computed == [0, 1, 2, 3, 5] and float(outputs[4][0, 0]) == pytest.approx(15.0)


def test_fixed_schedule():
    outputs, computed = drive(OutputForecast(ForecastConfig(order=1, interval=3, warmup=3)), poly([1.0, 1.0]), 12)
    assert computed == [0, 1, 2, 3, 6, 9, 11]  # warm-up, every 3rd after it, the last step
    _, computed = drive(OutputForecast(ForecastConfig(order=1, interval=3, warmup=2, tail=3)), poly([1.0]), 12)
    assert computed == [0, 1, 2, 5, 8, 9, 10, 11]  # the last 3 steps
    cache = OutputForecast(ForecastConfig(order=1, interval=3, warmup=3))
    drive(cache, poly([1.0]), 12)
    assert cache.stats() == {"computed_steps": 7, "reused_steps": 5, "reused_step_indices": [4, 5, 7, 8, 10]}


def test_adaptive_schedule_accumulates_the_last_terms_size():
    # constant output: the first-order term is 0, so only max_skip forces a compute
    _, computed = drive(OutputForecast(ForecastConfig(order=1, threshold=0.1, warmup=2, max_skip=3)), poly([5.0]), 12)
    assert computed == [0, 1, 5, 9, 11]
    # f(s) = 1 + s: at step 3 (last computed 2) the term is 1 against a forecast of 4, 0.25; step 4 adds 2/5
    values = poly([1.0, 1.0])
    _, computed = drive(OutputForecast(ForecastConfig(order=1, threshold=0.5, warmup=3)), values, 6)
    assert computed == [0, 1, 2, 4, 5]  # step 3: 0.25 <= 0.5 forecast; step 4: 0.25 + 0.4 > 0.5 compute
    # with `error`: the size of the second-order term a linear forecast leaves out (0 on a line: max_skip decides)
    _, computed = drive(OutputForecast(ForecastConfig(order=1, threshold=1e-6, warmup=3, max_skip=2, error=True)),
                        values, 9)
    assert computed == [0, 1, 2, 5, 8]
    _, computed = drive(OutputForecast(ForecastConfig(order=1, threshold=1e-6, warmup=3, max_skip=2, error=True)),
                        poly([1.0, 1.0, 1.0]), 9)
    assert computed == list(range(9))  # on a parabola the left-out term is never 0
    nan = lambda s: torch.full((2,), float("nan")) if s == 2 else torch.full((2,), float(s))  # noqa: E731
    _, computed = drive(OutputForecast(ForecastConfig(order=1, threshold=1.0, warmup=3)), nan, 6)
    assert computed == list(range(6))  # a non-finite size computes


def test_names_and_bad_settings():
    (config,) = configs_from_spec("forecast-i3-o2", published("latte"))
    assert (config.interval, config.order, config.basis) == (3, 2, "newton")
    (config,) = configs_from_spec("forecast-0.3-o1-w4-m5-t2-taylor-err", published("latte"))
    fields = (config.threshold, config.order, config.warmup, config.max_skip, config.tail, config.basis, config.error)
    assert fields == (0.3, 1, 4, 5, 2, "taylor", True)
    for bad in ("forecast-x", "forecast-i3-q2"):
        with pytest.raises(ValueError, match="unknown cache"):
            configs_from_spec(bad, published("latte"))
    with pytest.raises(ValueError, match="needs order >= 1"):
        ForecastConfig(order=0, interval=0)
    with pytest.raises(ValueError, match="basis"):
        ForecastConfig(basis="lagrange")


@pytest.mark.parametrize("spec", ["forecast-i1-o2", "forecast-0-o1"])
def test_settings_that_never_skip_give_the_uncached_output(spec):
    pipe = tiny_pipeline("latte")
    plain = pipe.generate(PROMPT, **RUN)
    pipe.set_cache(spec)
    out = pipe.generate(PROMPT, **RUN)
    assert out.stats["forecast"]["reused_steps"] == 0
    assert torch.equal(out.latents, plain.latents)
    pipe.set_cache("forecast-i2-o1")  # and one that skips does change it
    skipped = pipe.generate(PROMPT, **RUN)
    assert skipped.stats["forecast"]["reused_steps"] > 0 and not torch.equal(skipped.latents, plain.latents)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)], ids=["sp2", "cfg2"])
def test_parallel_forecast_matches_one_process(num_gpus, cfg_parallel):
    """The adaptive decision (sums all-reduced) and the fixed schedule alike on every rank, as in one process."""
    specs = ("forecast-i2-o2", "forecast-0.5-o1")
    pipe = tiny_pipeline("latte")
    single = {}
    for spec in specs:
        pipe.set_cache(spec)
        single[spec] = pipe.generate(PROMPT, **RUN)
        assert single[spec].stats["forecast"]["reused_steps"] > 0, spec
    with VideoSysEngine(tiny_config("latte", num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for spec in specs:
            engine.set_cache(spec)
            out = engine.generate(PROMPT, **RUN)
            assert_same_as_single(out, single[spec], spec)
            assert out.stats["forecast"] == single[spec].stats["forecast"], spec


# ---- calibrated schedules (forecast-s<K>, videosys/cache/forecast_schedule.py) ------------------------------------

def test_calibrated_steps_compute_exactly_there():
    steps = (0, 1, 3, 7, 9)
    outputs, computed = drive(OutputForecast(ForecastConfig(steps=steps, grid=10)), poly([1.0, 2.0]), 10)
    assert computed == list(steps)
    assert torch.allclose(outputs[5], poly([1.0, 2.0])(5))  # the line through steps 1 and 3, exact on a line
    with pytest.raises(ValueError, match="include step 0"):
        ForecastConfig(steps=(1, 3), grid=10)
    with pytest.raises(ValueError, match="lie below grid"):
        ForecastConfig(steps=(0, 10), grid=10)
    with pytest.raises(ValueError, match="calibrated for 10 steps, the run has 12"):
        OutputForecast(ForecastConfig(steps=steps, grid=10)).begin([0.0] * 12)


def test_calibrated_names_read_the_models_schedules_or_name_the_command():
    setting = {"schedules": {3: (10, (0, 1, 5))}}
    (config,) = configs_from_spec("forecast-s3", {"forecast": setting})
    assert (config.steps, config.grid) == ((0, 1, 5), 10)
    assert configs_from_spec("forecast-i2", {"forecast": setting})[0].steps == ()  # the table is read by name only
    with pytest.raises(ValueError, match=r"--method forecast --computes 4 --model latte --preset tiny"):
        tiny_config("latte", cache="forecast-s4")
    for k in (10, 13, 16, 19, 25):  # the demo model's, shipped (models/latte/cache_settings.py)
        (config,) = tiny_config("latte", preset="demo", cache=f"forecast-s{k}").cache_configs()
        assert len(config.steps) == k and config.grid == 50


def test_open_loop_schedule_places_computes_where_a_line_breaks():
    """Predictions on a line with a kink at step 6 (of 12): two computes after it make every forecast exact,
    evenly spaced ones do not."""
    from videosys.cache.forecast_schedule import line_costs, open_loop_schedule

    values = [torch.full((4,), float(s if s <= 6 else 6 + 3 * (s - 6))) + 10 for s in range(12)]
    cost = line_costs(values)

    def total(steps):  # each forecast step from the last two computed before it
        return sum(cost[[c for c in steps if c < s][-2], [c for c in steps if c < s][-1], s]
                   for s in range(12) if s not in steps)

    steps = open_loop_schedule(cost, 4)
    assert steps[:2] == [0, 1] and len(steps) == 4 and total(steps) == pytest.approx(0, abs=1e-12)
    assert total([0, 1, 5, 9]) > 1e-4
    with pytest.raises(ValueError, match="computes 2 .. 12 of 12"):
        open_loop_schedule(cost, 1)


@pytest.mark.slow
def test_calibration_command_finds_a_schedule_that_runs(tmp_path):
    """scripts/calibrate_teacache.py --method forecast on the tiny model: a schedule of K steps, at least as good as
    where its search started, that runs as a cache spec and computes exactly its steps."""
    import json
    import runpy
    import sys

    out = tmp_path / "schedules.json"
    argv = ["calibrate_teacache.py", "--method", "forecast", "--preset", "tiny", "--computes", "5", "--prompts", "1",
            "--steps", "12", "--rounds", "1", "--threads", "1", "--output", str(out)]
    old, sys.argv = sys.argv, argv
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path("scripts/calibrate_teacache.py", run_name="__main__")
    finally:
        sys.argv = old
    assert done.value.code == 0
    report = json.loads(out.read_text())
    found = report["schedules"]["5"]
    assert report["grid"] == 12 and len(found["steps"]) == 5 and found["psnr"] >= max(found["start_psnr"].values())
    pipe = tiny_pipeline("latte")
    pipe.set_cache({"method": "forecast", "steps": found["steps"], "grid": 12})
    stats = pipe.generate(PROMPT, seed=0, num_inference_steps=12).stats["forecast"]
    assert stats["computed_steps"] == 5 and sorted(set(range(12)) - set(stats["reused_step_indices"])) == found["steps"]
