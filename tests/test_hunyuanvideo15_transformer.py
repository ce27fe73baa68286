"""Our HunyuanVideo-1.5 transformer against diffusers' HunyuanVideo15Transformer3DModel on the same weights (T2V, I2V,
MeanFlow; padded text of different lengths per sample), the diffusers folder loading unchanged, the cache hook points
(the module docstring's table), and sequence parallelism (sp=2, uneven token counts) against one process."""

import dataclasses
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

import videosys.models.hunyuanvideo15.transformer as hv15
from videosys.cache import Cache, register
from videosys.cache.pab import PABConfig
from videosys.cache.registry import unregister
from videosys.cache.teacache import TeaCacheConfig
from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15Transformer3DModel, HunyuanVideo15TransformerConfig

from distributed import run_distributed

# 4 latent + 4 condition latent + 1 mask channels; head_dim 16 = RoPE t / h / w channels 4 + 6 + 6
TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_refiner_layers=2, text_embed_dim=24, text_embed_2_dim=20, image_embed_dim=12, rope_axes_dim=(4, 6, 6))
CONFIGS = {"t2v": TINY, "i2v": {**TINY, "task_type": "i2v"}, "meanflow": {**TINY, "use_meanflow": True}}
TEXT_LEN, BYT5_LEN, IMAGE_LEN = 7, 6, 5  # the releases: 1000 (Qwen2.5-VL, after the template), 256, 729 (SigLIP)


def random_weights(model: torch.nn.Module, seed: int = 0) -> torch.Generator:
    """Every weight drawn (norm weights around 1), none left at its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1 + noise if "norm" in name and p.ndim == 1 and name.endswith("weight") else noise)
    return g


def pair(name: str, seed: int = 0):
    """diffusers' model and ours, sharing one random state dict (loaded strictly into ours)."""
    from diffusers import HunyuanVideo15Transformer3DModel as DiffusersHV15

    ref = DiffusersHV15(**CONFIGS[name]).eval()
    g = random_weights(ref, seed)
    ours = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**CONFIGS[name])).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, g


def inputs(name: str, g: torch.Generator, batch: int = 2, frames: int = 3, height: int = 6, width: int = 8,
           t: float = 700.0, padded: bool = True) -> dict:
    """The forward's keyword arguments as diffusers' pipelines build them: [latents | condition latents | mask]
    channels, the LLM text and ByT5 glyph text with masks (padded: sample 0 has 5 of 7 LLM tokens and no glyph text,
    sample 1 all 7 and 3 of 6), SigLIP image tokens (zeros for T2V), timestep_r for MeanFlow."""
    cfg = CONFIGS[name]
    mask, mask_2 = torch.ones(batch, TEXT_LEN, dtype=torch.long), torch.ones(batch, BYT5_LEN, dtype=torch.long)
    if padded:
        mask[0, 5:] = 0
        mask_2[0] = 0
        mask_2[1:, 3:] = 0
    image = torch.randn(batch, IMAGE_LEN, cfg["image_embed_dim"], generator=g)
    out = dict(hidden_states=torch.randn(batch, cfg["in_channels"], frames, height, width, generator=g),
               timestep=torch.full((batch,), t),
               encoder_hidden_states=torch.randn(batch, TEXT_LEN, cfg["text_embed_dim"], generator=g),
               encoder_attention_mask=mask,
               encoder_hidden_states_2=torch.randn(batch, BYT5_LEN, cfg["text_embed_2_dim"], generator=g),
               encoder_attention_mask_2=mask_2,
               image_embeds=image if name == "i2v" else torch.zeros_like(image))
    if name == "meanflow":
        out["timestep_r"] = torch.full((batch,), t / 2)
    return out


def test_defaults_are_the_480p_t2v_release_and_its_layout_matches_diffusers():
    """Our defaults: diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py TRANSFORMER_CONFIGS["480p_t2v"];
    the full-size state dict has diffusers' names and shapes (meta device)."""
    from diffusers import HunyuanVideo15Transformer3DModel as DiffusersHV15

    release = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                   num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                   text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                   rope_axes_dim=(16, 56, 56), use_meanflow=False, target_size=640, task_type="t2v")
    assert dataclasses.asdict(HunyuanVideo15TransformerConfig()) == release
    for fields in (release, {**release, "use_meanflow": True}):
        with torch.device("meta"):
            ours = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**fields))
            ref = DiffusersHV15(**fields)
        assert ({k: tuple(v.shape) for k, v in ours.state_dict().items()}
                == {k: tuple(v.shape) for k, v in ref.state_dict().items()})
    assert not getattr(ref, "_keep_in_fp32_modules", None) and HunyuanVideo15Transformer3DModel.keep_in_fp32 == ()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers(name):
    ref, ours, g = pair(name)
    for frames, height, width, t in ((3, 6, 8, 999.0), (2, 4, 10, 250.0)):
        for padded in (True, False):
            kwargs = inputs(name, g, frames=frames, height=height, width=width, t=t, padded=padded)
            with torch.no_grad():
                expected = ref(**kwargs, return_dict=False)[0]
                got = ours(**kwargs)
            assert got.shape == expected.shape == (2, 4, frames, height, width)
            assert expected.abs().max() > 0.1  # a real signal, not zeros on both sides
            assert (got - expected).abs().max() <= 1e-5, (name, padded, float((got - expected).abs().max()))


def test_padding_tokens_are_never_attended():
    """What sits at masked text positions changes nothing; a batch of one without padding runs with no mask and no
    ByT5 / image tokens given at all (None) as with them masked out."""
    _, ours, g = pair("t2v")
    kwargs = inputs("t2v", g)
    noisy = dict(kwargs)
    noisy["encoder_hidden_states"] = kwargs["encoder_hidden_states"].clone()
    noisy["encoder_hidden_states"][0, 5:] = 100.0
    padding_2 = 1 - kwargs["encoder_attention_mask_2"][..., None]  # (B, L2, 1): 1 at padding
    noisy["encoder_hidden_states_2"] = kwargs["encoder_hidden_states_2"] + 50.0 * padding_2
    with torch.no_grad():
        assert (ours(**noisy) - ours(**kwargs)).abs().max() <= 1e-5
        one = {k: v[:1] for k, v in kwargs.items()}  # sample 0: no glyph text, 5 LLM tokens
        without = dict(one, encoder_hidden_states=one["encoder_hidden_states"][:, :5], encoder_attention_mask=None,
                       encoder_hidden_states_2=None, encoder_attention_mask_2=None, image_embeds=None)
        assert (ours(**without) - ours(**one)).abs().max() <= 1e-5


def test_loads_the_diffusers_folder_unchanged(tmp_path):
    """A folder diffusers wrote (config.json with its bookkeeping, rope_axes_dim as a list) loads strictly; in bf16
    every weight is bf16, as diffusers keeps none in fp32."""
    ref, _, g = pair("i2v")
    ref.save_pretrained(tmp_path / "transformer")
    ours = HunyuanVideo15Transformer3DModel.from_pretrained(str(tmp_path), "transformer")
    assert ours.config == HunyuanVideo15TransformerConfig(**CONFIGS["i2v"])
    kwargs = inputs("i2v", g)
    with torch.no_grad():
        assert (ours(**kwargs) - ref(**kwargs, return_dict=False)[0]).abs().max() <= 1e-5
    half = HunyuanVideo15Transformer3DModel.from_pretrained(str(tmp_path), "transformer", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


@pytest.mark.filterwarnings("ignore:There are modules")
@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_bf16_follows_diffusers(name, tmp_path):
    """Both in bf16 (the pipeline's timestep in the latents' dtype, as diffusers' pipeline passes it): within a few
    bf16 roundings of the output's scale. Everything up to the attention kernel is bit-equal (checked while writing
    this: time embedding, refined text, modulation, q / k / v); diffusers always calls SDPA with a (B, 1, L, L) mask on
    (B, L, H, d)-strided tensors, we with a key mask only where there is padding, on contiguous (B, H, L, d) ones and
    without the masked tokens, so PyTorch's CPU kernels reduce in another order (called diffusers' way, block 0's
    attention output is bit-equal)."""
    ref, _, g = pair(name)
    ref.save_pretrained(tmp_path)
    ours = HunyuanVideo15Transformer3DModel.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    ref = ref.to(torch.bfloat16)
    kwargs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs(name, g).items()}
    with torch.no_grad():
        expected, got = ref(**kwargs, return_dict=False)[0], ours(**kwargs)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= 0.02 * expected.float().abs().max()


# ---- cache hook points ----------------------------------------------------------------------------------------


@dataclass
class SiteCountingConfig:
    """Counts the stack and module calls it sees and reuses nothing (registered by this module only)."""


class SiteCounting(Cache):
    def __init__(self, config):
        self.config = config
        self.begin([])

    @classmethod
    def acts_at(cls, config):  # an observer: it replaces nothing
        return frozenset()

    def begin(self, timesteps, refresh_steps=()):
        self.counts, self.indicators, self.shapes = Counter(), [], Counter()

    def stack(self, stack):
        self.counts["stack"] += 1
        self.indicators.append(stack.indicator())
        return stack.rest(*stack.first(*stack.streams))  # first unit + the rest == the whole stack

    def module(self, site, compute):
        self.counts[f"{site.block}/{site.kind}"] += 1
        self.counts[f"index{site.index}"] += 1
        out = compute()
        self.shapes[f"{site.block}/{site.kind}", tuple(out.shape)] += 1
        return out


@pytest.fixture(scope="module", autouse=True)
def site_counting():
    register("hv15-site-counting", SiteCountingConfig, SiteCounting, for_model=lambda models: SiteCountingConfig())
    yield
    unregister("hv15-site-counting")


def docstring_sites() -> dict[str, int]:
    """The module docstring's table: {"block kind/site kind": calls per block}."""
    sites, block = {}, None
    for line in hv15.__doc__.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[1] and cells[1] != "site kind":
            block = cells[0] or block
            sites[f"{block}/{cells[1]}"] = int(cells[3])
    return sites


def steps(model, kwargs: dict, timesteps=(999.0, 700.0, 400.0, 100.0)) -> list[torch.Tensor]:
    """One generation's transformer calls (the caches' per-generation and per-step calls as a pipeline makes them)."""
    model.cache_begin(list(timesteps))
    out = []
    for i, t in enumerate(timesteps):
        model.cache_step(i, t)
        with torch.no_grad():
            out.append(model(**{**kwargs, "timestep": torch.full_like(kwargs["timestep"], t)}))
    return out


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_module_sites_and_indicator(name):
    assert docstring_sites() == {"double/full": 1, "double/mlp": 1}
    _, ours, g = pair(name)
    kwargs = inputs(name, g)
    plain = steps(ours, kwargs)
    ours.enable_cache(SiteCountingConfig())
    counted = steps(ours, kwargs)
    state = ours.active_cache("hv15-site-counting")
    calls, layers = len(plain), TINY["num_layers"]
    expected = {"stack": calls, **{k: v * calls * layers for k, v in docstring_sites().items()},
                **{f"index{i}": sum(docstring_sites().values()) * calls for i in range(layers)}}
    assert dict(state.counts) == expected
    # both sites return (B, S + N, C), text first: S = the batch's longest valid context (7 LLM + 3 ByT5, + 5 image)
    s, n, dim = 10 + (IMAGE_LEN if name == "i2v" else 0), 3 * 6 * 8, 32
    assert set(k[1] for k in state.shapes) == {(2, s + n, dim)}
    # TeaCache4HunyuanVideo's indicator: block 0's modulated video input
    assert all(i.shape == (2, n, dim) for i in state.indicators)
    assert all(torch.equal(a, b) for a, b in zip(counted, plain))


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_teacache_that_never_reuses_equals_uncached(name):
    _, ours, g = pair(name)
    kwargs = inputs(name, g)
    plain = steps(ours, kwargs)
    ours.enable_cache(TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)))
    cached = steps(ours, kwargs)
    assert ours.cache_stats()["teacache"]["reused_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(cached, plain))
    ours.enable_cache(TeaCacheConfig(threshold=10.0, coefficients=(1.0, 0.0)))  # reuses: the residual path runs
    reused = steps(ours, kwargs)
    assert ours.cache_stats()["teacache"]["reused_steps"] == 2
    assert torch.equal(reused[0], plain[0]) and not torch.equal(reused[1], plain[1])


# PAB broadcasting the joint attention ("full" counts as spatial) every other step (no published HunyuanVideo-1.5
# setting); the "double" blocks' MLPs are left alone (not in mlp_kinds)
PAB_ALL_STEPS = PABConfig(spatial=((0, 1000), 2), temporal=None, cross=None, mlp_kinds=())


def test_pab_broadcasts_the_joint_attention():
    _, ours, g = pair("t2v")
    kwargs = inputs("t2v", g)
    plain = steps(ours, kwargs)
    ours.enable_cache(PAB_ALL_STEPS)
    cached = steps(ours, kwargs)
    layers = TINY["num_layers"]
    assert ours.cache_stats()["pab"] == {"spatial_computed": 2 * layers, "spatial_reused": 2 * layers}
    assert torch.equal(cached[0], plain[0]) and not torch.equal(cached[1], plain[1])


# ---- sequence parallelism ------------------------------------------------------------------------------------

SP_SHAPES = ((3, 6, 8), (3, 5, 5))  # 144 tokens, and 75: uneven, padded to 76 over two ranks


def sp_cases() -> list:
    """(name, config fields, state dict, forward kwargs per shape): T2V and I2V, random weights."""
    cases = []
    for name in ("t2v", "i2v"):
        model = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**CONFIGS[name]))
        g = random_weights(model, seed=1)
        shapes = [inputs(name, g, frames=f, height=h, width=w) for f, h, w in SP_SHAPES]
        cases.append((name, CONFIGS[name], model.state_dict(), shapes))
    return cases


def _sp_run(rank, world, cases):
    from videosys.core.parallel import init_parallel

    state = init_parallel(False, "cpu")
    out = {}
    for name, fields, weights, shapes in cases:
        model = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**fields)).eval()
        model.load_state_dict(weights)
        model.set_parallel(state)
        assert model.parallel.sp_size == world
        for k, kwargs in enumerate(shapes):
            with torch.no_grad():
                out[name, k] = model(**kwargs)
        # a stack cache under sp: the indicator (this rank's real tokens) reduced over the ranks
        model.enable_cache(TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)))
        out[name, "teacache"] = steps(model, shapes[1])
        # a module cache under sp: a broadcast joint attention skips its all-to-alls on every rank alike
        model.disable_cache()
        model.enable_cache(PAB_ALL_STEPS)
        out[name, "pab"] = steps(model, shapes[1])
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread_per_rank")
def test_sequence_parallel_equals_one_process():
    """sp=2 (gloo): video tokens sharded (75 of them padded to 76), text replicated, joint attention over heads after
    an all-to-all; every rank returns the whole output."""
    cases = sp_cases()
    ranks = run_distributed(_sp_run, 2, cases)
    for name, fields, weights, shapes in cases:
        model = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**fields)).eval()
        model.load_state_dict(weights)
        for k, kwargs in enumerate(shapes):
            with torch.no_grad():
                expected = model(**kwargs)
            for rank in ranks:
                assert (rank[name, k] - expected).abs().max() <= 1e-5, (name, SP_SHAPES[k])
        for cache in ("teacache", "pab"):
            model.disable_cache()
            model.enable_cache(TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)) if cache == "teacache"
                               else PAB_ALL_STEPS)
            expected = steps(model, shapes[1])
            for rank in ranks:
                assert all((a - b).abs().max() <= 1e-5 for a, b in zip(rank[name, cache], expected)), (name, cache)


def test_sp_size_must_divide_the_heads():
    from videosys.core.parallel import ParallelState

    model = HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(**TINY))
    with pytest.raises(ValueError, match="not divisible by sp size 4"):
        model.set_parallel(ParallelState(sp_size=4))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_equals_eager():
    """compile=True's three paths (models/modules/compile.py): the whole forward with no cache, each block whole with
    a stack cache, the branches with a module-hook cache around them."""
    from videosys.models.modules.compile import compile_regions

    _, ours, g = pair("i2v")
    kwargs = inputs("i2v", g)
    with torch.no_grad():
        eager = ours(**kwargs)
    assert compile_regions(ours) == 1 + 2 * 3  # the forward; per block its forward and two branches
    for cache in (None, TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)), SiteCountingConfig()):
        ours.disable_cache()
        if cache is not None:
            ours.enable_cache(cache)
        with torch.no_grad():
            assert (ours(**kwargs) - eager).abs().max() <= 1e-5, cache
