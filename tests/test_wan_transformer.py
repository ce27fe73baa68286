"""Our Wan transformer against diffusers' WanTransformer3DModel on the same weights (T2V, I2V, TI2V-5B-like), the
diffusers folder and the original single-file layout loading the same model, the cache hook points, and
sequence parallelism (sp=2, uneven token counts) against one process."""

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from videosys.cache import Cache, register
from videosys.cache.pab import PABConfig
from videosys.cache.registry import unregister
from videosys.cache.teacache import TeaCacheConfig
from videosys.models.wan.transformer import (WanTransformer3DModel, WanTransformerConfig, convert_original_state_dict,
                                             to_original_state_dict)

from distributed import run_distributed

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=24, freq_dim=32,
            ffn_dim=48, num_layers=2)
CONFIGS = {  # name -> config fields (tiny shapes of the three release kinds)
    "t2v": TINY,
    # Wan2.1 I2V: CLIP image tokens (image_dim) with their own keys / values in every cross-attention
    "i2v": {**TINY, "in_channels": 12, "image_dim": 20, "added_kv_proj_dim": 32},
    # Wan2.2 TI2V-5B: 48 latent channels, per-token timesteps, no image branch
    "ti2v": {**TINY, "in_channels": 48, "out_channels": 48},
}
TEXT_LEN = {"t2v": 7, "i2v": 512, "ti2v": 7}  # diffusers' I2V cuts the text as the last 512 context tokens
IMAGE_LEN = 257  # CLIP ViT-H/14 tokens (256 patches + class)


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
    from diffusers import WanTransformer3DModel as DiffusersWan

    config = WanTransformerConfig(**CONFIGS[name])
    ref = DiffusersWan(**CONFIGS[name]).eval()
    g = random_weights(ref, seed)
    ours = WanTransformer3DModel(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, g


def inputs(name: str, g: torch.Generator, batch: int = 2, frames: int = 3, height: int = 8, width: int = 8,
           t: float = 700.0) -> dict:
    """The forward's keyword arguments: latents, timesteps (per token for ti2v: the first latent frame's at 0, as
    Wan2.2's image-to-video), text and for i2v the CLIP image tokens."""
    cfg = CONFIGS[name]
    x = torch.randn(batch, cfg["in_channels"], frames, height, width, generator=g)
    timestep = torch.full((batch,), t)
    if name == "ti2v":
        per_frame = (height // 2) * (width // 2)
        timestep = torch.full((batch, frames * per_frame), t)
        timestep[:, :per_frame] = 0
    out = dict(hidden_states=x, timestep=timestep,
               encoder_hidden_states=torch.randn(batch, TEXT_LEN[name], cfg["text_dim"], generator=g))
    if name == "i2v":
        out["encoder_hidden_states_image"] = torch.randn(batch, IMAGE_LEN, cfg["image_dim"], generator=g)
    return out


# the releases' transformer configs (Wan-AI/...-Diffusers transformer/config.json; diffusers' convert_wan_to_diffusers.py)
_14B = dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)
RELEASES = {
    "Wan2.1-T2V-1.3B": {},  # our defaults
    "Wan2.1-T2V-14B / Wan2.2-T2V-A14B expert": _14B,
    "Wan2.1-I2V-14B-480P / 720P": {**_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120},
    "Wan2.1-FLF2V-14B-720P": {**_14B, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120,
                              "pos_embed_seq_len": 514},
    "Wan2.2-I2V-A14B expert": {**_14B, "in_channels": 36},
    "Wan2.2-TI2V-5B": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
}


@pytest.mark.parametrize("release", list(RELEASES))
def test_release_layouts_match_diffusers(release):
    """Every release's full-size state dict: diffusers' names and shapes, and original names both ways (meta device)."""
    from diffusers import WanTransformer3DModel as DiffusersWan

    with torch.device("meta"):
        ours = WanTransformer3DModel(WanTransformerConfig(**RELEASES[release]))
        ref = DiffusersWan(**{**{f.name: getattr(WanTransformerConfig(), f.name)
                                 for f in dataclasses.fields(WanTransformerConfig)}, **RELEASES[release]})
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert convert_original_state_dict(to_original_state_dict(ours.state_dict())).keys() == shapes.keys()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers(name):
    ref, ours, g = pair(name)
    for frames, height, width, t in ((3, 8, 8, 999.0), (2, 6, 10, 250.0)):
        kwargs = inputs(name, g, frames=frames, height=height, width=width, t=t)
        with torch.no_grad():
            expected = ref(**kwargs, return_dict=False)[0]
            got = ours(**kwargs)
        assert got.shape == expected.shape == (2, CONFIGS[name]["out_channels"], frames, height, width)
        assert expected.abs().max() > 0.1  # a real signal, not zeros on both sides
        assert (got - expected).abs().max() <= 1e-5, (name, float((got - expected).abs().max()))


def test_per_token_timesteps_equal_one_per_sample_when_alike():
    """TI2V's (B, N) timesteps, all equal, give what one timestep per sample gives (the two modulation paths)."""
    _, ours, g = pair("ti2v")
    kwargs = inputs("ti2v", g, t=400.0)
    kwargs["timestep"] = torch.full_like(kwargs["timestep"], 400.0)
    with torch.no_grad():
        per_token = ours(**kwargs)
        per_sample = ours(**{**kwargs, "timestep": torch.full((2,), 400.0)})
    assert (per_token - per_sample).abs().max() <= 1e-5


def test_loads_the_diffusers_folder_unchanged(tmp_path):
    """A folder diffusers wrote (config.json with its bookkeeping, patch_size as a list) loads strictly; in bf16 the
    modules diffusers keeps in fp32 stay fp32."""
    from safetensors.torch import load_file, save_file

    ref, _, g = pair("i2v")
    ref.save_pretrained(tmp_path / "transformer")
    # the I2V releases carry an unused attn2.norm_added_q that diffusers ignores on load: so do we
    weights = str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file({**load_file(weights), "blocks.0.attn2.norm_added_q.weight": torch.ones(32)}, weights)
    ours = WanTransformer3DModel.from_pretrained(str(tmp_path), "transformer")
    assert ours.config == WanTransformerConfig(**CONFIGS["i2v"])
    kwargs = inputs("i2v", g)
    with torch.no_grad():
        assert (ours(**kwargs) - ref(**kwargs, return_dict=False)[0]).abs().max() <= 1e-5
    half = WanTransformer3DModel.from_pretrained(str(tmp_path), "transformer", dtype=torch.bfloat16)
    assert half.scale_shift_table.dtype == half.blocks[0].scale_shift_table.dtype == torch.float32
    assert half.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert half.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = half(**{k: v.to(torch.bfloat16) if k != "timestep" else v for k, v in kwargs.items()})
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def diffusers_in_bf16(ref):
    """diffusers' model as its from_pretrained(torch_dtype=bfloat16) leaves it: bf16 but for _keep_in_fp32_modules
    (matched against the names' dotted parts) and the RoPE buffers, kept fp32 (done by hand: diffusers refuses
    keep_in_fp32_modules without accelerate, which this environment lacks)."""
    fp32 = {k: v.clone() for k, v in ref.state_dict().items()}
    rope = ref.rope.freqs_cos.clone(), ref.rope.freqs_sin.clone()
    ref = ref.to(torch.bfloat16)
    ref.rope.freqs_cos, ref.rope.freqs_sin = rope
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if any(part in name.split(".") for part in ref._keep_in_fp32_modules):
                p.data = fp32[name]
    return ref


@pytest.mark.filterwarnings("ignore:There are modules")  # diffusers' notice on .to(bfloat16)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_bf16_follows_diffusers_mixed_precision(name, tmp_path):
    """Loaded in bf16 with the same fp32 modules as diffusers, the same maths in the same dtypes: T2V and TI2V equal
    diffusers bit for bit on CPU. I2V within a bf16 rounding: diffusers projects the text keys from a slice of the
    joined [image; text] context, and a bf16 GEMM rounds a strided input differently from a contiguous one."""
    ref, _, g = pair(name)
    ref.save_pretrained(tmp_path)
    ours = WanTransformer3DModel.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    ref = diffusers_in_bf16(ref)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in ref.named_parameters()}
    kwargs = {k: v if k == "timestep" else v.to(torch.bfloat16) for k, v in inputs(name, g).items()}
    with torch.no_grad():
        expected, got = ref(**kwargs, return_dict=False)[0], ours(**kwargs)
    assert got.dtype == torch.bfloat16
    if name == "i2v":
        assert (got.float() - expected.float()).abs().max() <= 0.02 * expected.float().abs().max()
    else:
        assert torch.equal(got, expected)


# ---- the original single-file layout ------------------------------------------------------------------------

# block 0's keys in the original wan/modules/model.py (WanAttentionBlock with WanI2VCrossAttention, cross_attn_norm):
# norm1 / norm2 carry no weights; norm3 is the cross-attention norm
ORIGINAL_BLOCK_KEYS = {
    f"blocks.0.{k}" for k in (
        [f"{a}.{p}.{w}" for a in ("self_attn", "cross_attn") for p in "qkvo" for w in ("weight", "bias")]
        + [f"{a}.{n}.weight" for a in ("self_attn", "cross_attn") for n in ("norm_q", "norm_k")]
        + ["cross_attn.k_img.weight", "cross_attn.k_img.bias", "cross_attn.v_img.weight", "cross_attn.v_img.bias",
           "cross_attn.norm_k_img.weight", "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias",
           "ffn.2.weight", "ffn.2.bias", "modulation"])
}
ORIGINAL_TOP_KEYS = {  # WanModel (i2v): embeddings, Head, MLPProj
    "patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight", "text_embedding.0.bias",
    "text_embedding.2.weight", "text_embedding.2.bias", "time_embedding.0.weight", "time_embedding.0.bias",
    "time_embedding.2.weight", "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias",
    "head.head.weight", "head.head.bias", "head.modulation", "img_emb.proj.0.weight", "img_emb.proj.0.bias",
    "img_emb.proj.1.weight", "img_emb.proj.1.bias", "img_emb.proj.3.weight", "img_emb.proj.3.bias",
    "img_emb.proj.4.weight", "img_emb.proj.4.bias",
}


def test_original_key_names():
    _, ours, _ = pair("i2v")
    original = to_original_state_dict(ours.state_dict())
    assert {k for k in original if k.startswith("blocks.0.")} == ORIGINAL_BLOCK_KEYS
    assert {k for k in original if not k.startswith("blocks.")} == ORIGINAL_TOP_KEYS
    back = convert_original_state_dict(original)
    assert back.keys() == ours.state_dict().keys()
    # ComfyUI's repackaged files put model.diffusion_model. in front
    assert convert_original_state_dict({"model.diffusion_model.head.head.weight": 1}) == {"proj_out.weight": 1}
    with pytest.raises(KeyError, match="no Wan original layout"):
        convert_original_state_dict({"blocks.0.self_attn.qkv.weight": torch.zeros(1)})


def test_original_layout_loads_the_same_model(tmp_path):
    """The state dict written in the original names, as one file and as shards with an index json (the releases'
    layout, with their config.json in the original names), loads into the model diffusers' layout gives."""
    from safetensors.torch import save_file

    ref, ours, g = pair("i2v")
    original = {k: v.contiguous() for k, v in to_original_state_dict(ours.state_dict()).items()}
    save_file(original, str(tmp_path / "single.safetensors"))
    shards = tmp_path / "sharded"
    shards.mkdir()
    keys = sorted(original)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: original[k] for k in part}, str(shards / name))
        weight_map.update({k: name for k in part})
    (shards / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = CONFIGS["i2v"]
    (shards / "config.json").write_text(json.dumps({  # the original WanModel's config.json fields
        "_class_name": "WanModel", "model_type": "i2v", "dim": 32, "num_heads": 2, "in_dim": cfg["in_channels"],
        "out_dim": cfg["out_channels"], "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"],
        "text_dim": cfg["text_dim"], "num_layers": cfg["num_layers"], "eps": 1e-6, "text_len": 512}))
    config = WanTransformerConfig(**cfg)
    loaded = [WanTransformer3DModel.from_original(str(tmp_path / "single.safetensors"), config),
              WanTransformer3DModel.from_original(str(shards)),  # config from the original config.json
              WanTransformer3DModel.from_original(original, config)]
    assert all(model.config == config for model in loaded)  # the image branch's widths read off the weights
    kwargs = inputs("i2v", g)
    with torch.no_grad():
        expected = ref(**kwargs, return_dict=False)[0]
        for model in loaded:
            assert torch.equal(model(**kwargs), ours(**kwargs))
        assert (ours(**kwargs) - expected).abs().max() <= 1e-5


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
        self.counts, self.indicators = Counter(), []

    def stack(self, stack):
        self.counts["stack"] += 1
        self.indicators.append(stack.indicator())
        return stack.rest(*stack.first(*stack.streams))  # first unit + the rest == the whole stack

    def module(self, site, compute):
        self.counts[f"{site.kind}/{site.block}"] += 1
        self.counts[f"index{site.index}"] += 1
        return compute()


@pytest.fixture(scope="module", autouse=True)
def site_counting():
    register("wan-site-counting", SiteCountingConfig, SiteCounting, for_model=lambda models: SiteCountingConfig())
    yield
    unregister("wan-site-counting")


# per block and stack pass, as tests/test_cache_registry.py's PER_LAYER counts them: one stream, full attention
PER_LAYER = {"full/full": 1, "cross/full": 1, "mlp/full": 1}


def steps(model, kwargs: dict, timesteps=(999.0, 700.0, 400.0, 100.0)) -> list[torch.Tensor]:
    """One generation's transformer calls (the caches' per-generation and per-step calls as a pipeline makes them)."""
    model.cache_begin(list(timesteps))
    out = []
    for i, t in enumerate(timesteps):
        model.cache_step(i, t)
        with torch.no_grad():
            out.append(model(**{**kwargs, "timestep": torch.full_like(kwargs["timestep"], t)}))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_module_sites_and_indicator(name):
    _, ours, g = pair(name)
    kwargs = inputs(name, g)
    plain = steps(ours, kwargs)
    ours.enable_cache(SiteCountingConfig())
    counted = steps(ours, kwargs)
    state = ours.active_cache("wan-site-counting")
    calls, layers = len(plain), CONFIGS[name]["num_layers"]
    expected = {"stack": calls, **{k: v * calls * layers for k, v in PER_LAYER.items()},
                **{f"index{i}": sum(PER_LAYER.values()) * calls for i in range(layers)}}
    assert dict(state.counts) == expected
    dim, n = CONFIGS[name]["num_attention_heads"] * CONFIGS[name]["attention_head_dim"], 3 * 4 * 4
    # TeaCache4Wan2.1's indicator: the timestep projection e0, per token for TI2V
    assert all(i.shape == ((2, n, 6, dim) if name == "ti2v" else (2, 6, dim)) for i in state.indicators)
    assert all(torch.equal(a, b) for a, b in zip(counted, plain))


@pytest.mark.parametrize("name", ["t2v", "ti2v"])
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


# PAB broadcasting Wan's self-attention ("full" counts as spatial) every other step and its cross-attention every
# third, inside the whole schedule (no published Wan setting)
PAB_ALL_STEPS = PABConfig(spatial=((0, 1000), 2), temporal=None, cross=((0, 1000), 3), mlp_kinds=())


def test_pab_broadcasts_at_the_wan_sites():
    _, ours, g = pair("i2v")
    kwargs = inputs("i2v", g)
    plain = steps(ours, kwargs)
    ours.enable_cache(PAB_ALL_STEPS)
    cached = steps(ours, kwargs)
    layers = CONFIGS["i2v"]["num_layers"]
    # 4 steps: self-attention reused on steps 1 and 3, cross-attention on steps 1 and 2
    assert ours.cache_stats()["pab"] == {"spatial_computed": 2 * layers, "spatial_reused": 2 * layers,
                                         "cross_computed": 2 * layers, "cross_reused": 2 * layers}
    assert torch.equal(cached[0], plain[0]) and not torch.equal(cached[1], plain[1])


# ---- sequence parallelism ------------------------------------------------------------------------------------

SP_SHAPES = ((3, 8, 8), (3, 6, 10))  # 48 tokens, and 45: uneven, padded to 46 over two ranks


def sp_cases() -> list:
    """(name, config fields, state dict, forward kwargs per shape): each family kind, random weights."""
    cases = []
    for name in CONFIGS:
        model = WanTransformer3DModel(WanTransformerConfig(**CONFIGS[name]))
        g = random_weights(model, seed=1)
        shapes = [inputs(name, g, frames=f, height=h, width=w) for f, h, w in SP_SHAPES]
        cases.append((name, CONFIGS[name], model.state_dict(), shapes))
    return cases


def _sp_run(rank, world, cases):
    from videosys.core.parallel import init_parallel

    state = init_parallel(False, "cpu")
    out = {}
    for name, fields, weights, shapes in cases:
        model = WanTransformer3DModel(WanTransformerConfig(**fields)).eval()
        model.load_state_dict(weights)
        model.set_parallel(state)
        assert model.parallel.sp_size == world
        for k, kwargs in enumerate(shapes):
            with torch.no_grad():
                out[name, k] = model(**kwargs)
        # a stack cache under sp: the indicator (per token: this rank's real tokens) reduced over the ranks
        model.enable_cache(TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)))
        out[name, "teacache"] = steps(model, shapes[1])
        # a module cache under sp: a broadcast self-attention skips its all-to-alls on every rank alike
        model.disable_cache()
        model.enable_cache(PAB_ALL_STEPS)
        out[name, "pab"] = steps(model, shapes[1])
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread_per_rank")
def test_sequence_parallel_equals_one_process():
    """sp=2 (gloo): tokens sharded (45 of them padded to 46), self-attention over heads after an all-to-all,
    cross-attention per shard, per-token timesteps sharded with the tokens; every rank returns the whole output."""
    cases = sp_cases()
    ranks = run_distributed(_sp_run, 2, cases)
    for name, fields, weights, shapes in cases:
        model = WanTransformer3DModel(WanTransformerConfig(**fields)).eval()
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

    model = WanTransformer3DModel(WanTransformerConfig(**TINY))
    with pytest.raises(ValueError, match="not divisible by sp size 4"):
        model.set_parallel(ParallelState(sp_size=4))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_equals_eager():
    """compile=True's three paths (models/modules/compile.py): the whole forward with no cache, each block's
    residual stream with a stack cache, the branches with a module-hook cache around them."""
    from videosys.models.modules.compile import compile_regions

    _, ours, g = pair("ti2v")
    kwargs = inputs("ti2v", g)
    with torch.no_grad():
        eager = ours(**kwargs)
    assert compile_regions(ours) == 1 + 2 * 4  # the forward; per block its residual stream and three branches
    for cache in (None, TeaCacheConfig(threshold=0.0, coefficients=(1.0, 0.0)), SiteCountingConfig()):
        ours.disable_cache()
        if cache is not None:
            ours.enable_cache(cache)
        with torch.no_grad():
            assert (ours(**kwargs) - eager).abs().max() <= 1e-5, cache


def test_original_i2v_config_without_image_weights_has_no_image_branch(tmp_path):
    """Wan2.2 I2V-A14B's original config.json says model_type "i2v" as Wan2.1 I2V does, but its experts have no CLIP
    image branch (36 input channels, text cross-attention only): the weights decide."""
    from safetensors.torch import save_file

    fields = {**TINY, "in_channels": 36}
    model = WanTransformer3DModel(WanTransformerConfig(**fields))
    random_weights(model)
    original = {k: v.contiguous() for k, v in to_original_state_dict(model.state_dict()).items()}
    save_file(original, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "model_type": "i2v", "dim": 32, "num_heads": 2, "in_dim": 36, "out_dim": 4,
        "ffn_dim": 48, "freq_dim": 32, "text_dim": 24, "num_layers": 2, "eps": 1e-6, "text_len": 512}))
    loaded = WanTransformer3DModel.from_original(str(tmp_path))
    assert loaded.config == WanTransformerConfig(**fields)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
