"""The family contract: a new model family is its own code plus one registry line.

"Toy" below is a complete family written only here: a two-block DiT (our own small transformer with the
hook points every family has: the block stack with an indicator, "full" / "cross" / "mlp" module sites,
tokens sharded over sp), its config (published defaults, a `tiny` preset, a size grid checked without
weights, one published cache setting: TeaCache coefficients) and its pipeline hooks. Registered with one
line (`FAMILIES["toy"] = ...`), it must then work everywhere a built-in family does: every registered cache
method that applies, sp=2 and cfg=2 equal to one process, the CLI, and the server's validation answering 422
before any weights load. Nothing in videosys/ is edited for it.
"""

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.core import comm
from videosys.core.config import BaseConfig, RequestError
from videosys.core.parallel import ParallelState
from videosys.core.pipeline import VideoSysPipeline
from videosys.models import FAMILIES
from videosys.models.modules.adaln import modulate, modulation
from videosys.models.modules.attention import Attention, FeedForward
from videosys.models.modules.embeddings import timestep_embedding
from videosys.utils import text as text_stack

from conftest import PROMPT, applicable_methods

WIDTH, HEADS, TEXT_DIM, LATENT, FACTOR = 32, 2, 16, 4, 4  # FACTOR: the toy VAE's spatial upsampling
# published for this family (a made-up polynomial: rescale(x) = 2x, so TeaCache reuses at moderate thresholds)
CACHE_SETTINGS = {"teacache": {"toy": dict(coefficients=(2.0, 0.0))}}
PAB_SPEC = {"method": "pab", "spatial": ((100, 900), 2), "cross": ((100, 900), 3)}  # full attention counts as spatial


# ---- the transformer: two blocks, the hook points every family has -----------------------------------
class ToyBlock(nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.index = index
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH, elementwise_affine=False), nn.LayerNorm(WIDTH)
        self.attn = Attention(WIDTH, HEADS, WIDTH // HEADS, bias=True)
        self.cross = Attention(WIDTH, HEADS, WIDTH // HEADS, bias=True, cross_attention_dim=TEXT_DIM)
        self.ff = FeedForward(WIDTH)
        self.table = nn.Parameter(torch.randn(6, WIDTH) / WIDTH**0.5)

    def modulated_input(self, x, mod):
        return modulate(self.norm1(x), mod[0], mod[1])

    def self_attention(self, h, size: int, sp_group):
        """Local queries (B, N_local, C) against every rank's keys: the whole sequence gathered, padding cut off."""
        keys = comm.gather(h, 1, sp_group, size=size)  # (B, N, C)
        q = self.attn.to_q(h).unflatten(-1, (HEADS, -1)).transpose(1, 2)
        k, v = (proj(keys).unflatten(-1, (HEADS, -1)).transpose(1, 2) for proj in (self.attn.to_k, self.attn.to_v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.attn.to_out[0](out)

    def forward(self, x, t_emb, text, hooks, size: int, sp_group):
        mod = modulation(self.table, t_emb, token_dims=1)  # 6 x (B, 1, C)
        x = x + mod[2] * module_call(hooks, "full", self.index,
                                     lambda: self.self_attention(self.modulated_input(x, mod), size, sp_group))
        x = x + module_call(hooks, "cross", self.index, lambda: self.cross(x, text), block="full")
        return x + mod[5] * module_call(hooks, "mlp", self.index,
                                        lambda: self.ff(modulate(self.norm2(x), mod[3], mod[4])), block="full")


class ToyTransformer(nn.Module, CacheMixin):
    def __init__(self):
        super().__init__()
        self.proj_in, self.proj_out = nn.Linear(LATENT, WIDTH), nn.Linear(WIDTH, LATENT)
        self.time = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.SiLU(), nn.Linear(WIDTH, WIDTH))
        self.blocks = nn.ModuleList(ToyBlock(i) for i in range(2))
        self.parallel = ParallelState()

    @property
    def dtype(self):
        return self.proj_in.weight.dtype

    def set_parallel(self, state: ParallelState) -> None:
        self.parallel = state

    def forward(self, latents, timestep, text):
        """(B, C, F, h, w) latents, (B,) timesteps, (B, S, C_text) text -> (B, C, F, h, w)."""
        b, c, f, h, w = latents.shape
        size, sp_group = f * h * w, self.parallel.sp_group
        x = comm.split(self.proj_in(latents.flatten(2).transpose(1, 2)), 1, sp_group)  # (B, N_local, C)
        t_emb = self.time(timestep_embedding(timestep.expand(b), WIDTH).to(x.dtype))
        hooks = self.module_hooks()

        def run(x, start=0, stop=None):
            for block in self.blocks[start:stop]:
                x = block(x, t_emb, text, hooks, size, sp_group)
            return x

        def indicator():  # the first block's modulated input, this rank's real tokens only
            begin, end = comm.shard_range(size, self.parallel.sp_size, self.parallel.sp_rank)
            first = self.blocks[0]
            return first.modulated_input(x[:, : end - begin], modulation(first.table, t_emb, token_dims=1))

        x = self.cache_stack(run, x, indicator=indicator, num_units=len(self.blocks))
        x = comm.gather(self.proj_out(x), 1, sp_group, size=size)  # (B, N, C_latent)
        return x.transpose(1, 2).reshape(b, c, f, h, w)


class ToyVAE(nn.Module):
    """Decodes (B, C, F, h, w) latents to (B, 3, F, FACTOR h, FACTOR w) pixels in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(LATENT, 3, 1)

    @property
    def dtype(self):
        return self.conv.weight.dtype

    def decode(self, latents):
        return torch.tanh(self.conv(latents)).repeat_interleave(FACTOR, -1).repeat_interleave(FACTOR, -2)


# ---- the config and the pipeline --------------------------------------------------------------------
@dataclass
class ToyConfig(BaseConfig):
    """A made-up family: published defaults, a `tiny` preset, a size grid, one published cache setting."""

    model_name = "toy"
    official_model_path = "toy-org/Toy-1"  # never loaded here: the tests use the tiny preset
    defaults = dict(num_frames=4, height=64, width=64, num_inference_steps=20, guidance_scale=5.0, fps=8)
    presets = {"tiny": dict(num_frames=3, height=16, width=24, num_inference_steps=8, guidance_scale=5.0, fps=8)}
    cache_settings = CACHE_SETTINGS

    def check_request(self, values: dict) -> dict:
        values = super().check_request(values)
        self.check_divisible(values, 2 * FACTOR, "the toy VAE's 4x, then 2x2 latent tiles")
        return values

    @property
    def pipeline_cls(self):
        return ToyPipeline


class ToyPipeline(VideoSysPipeline):
    progress_name = "toy"

    @classmethod
    def from_config(cls, config: ToyConfig) -> "ToyPipeline":
        from diffusers import DDIMScheduler

        tokenizer = text_stack.build_tiny_tokenizer(16)
        text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TEXT_DIM, seed=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformer, vae = ToyTransformer().eval(), ToyVAE().eval()
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, DDIMScheduler(num_train_timesteps=1000))

    def encode_prompt(self, prompts, negative_prompt, do_cfg):
        def encode(texts):
            return text_stack.encode_text(self.tokenizer, self.text_encoder, texts, 16, self.device)[0]

        states = encode(prompts)
        return torch.cat([encode([negative_prompt] * len(prompts)), states]) if do_cfg else states

    def latent_shape(self, run):
        v = run.values
        return len(run.prompts), LATENT, v["num_frames"], v["height"] // FACTOR, v["width"] // FACTOR

    def predict(self, run, model_in, i, t, text):
        return self.transformer(model_in, run.model_timesteps[i], text)

    def decode(self, latents):
        return self.to_frames(self.vae.decode(latents))


@pytest.fixture(autouse=True)
def toy_family(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", f"{__name__}:ToyConfig")  # the one registry line


def toy_config(**fields) -> ToyConfig:
    from videosys.models import config_class

    return config_class("toy")(**{"preset": "tiny", "progress_bar": False, **fields})


# ---- the tests -------------------------------------------------------------------------------------
def test_published_setting_and_grid_come_from_the_family():
    config = toy_config()
    assert config.published_cache_settings() == {"teacache": {"coefficients": (2.0, 0.0)}}
    assert config.cache_configs() == []
    assert toy_config(cache="teacache-fast").cache_configs()[0].coefficients == (2.0, 0.0)
    with pytest.raises(RequestError, match="height=20 must be divisible by 8") as err:
        toy_config(height=20)
    assert err.value.field == "height"
    assert toy_config().check_request({"width": 32})["width"] == 32


def test_every_method_that_applies_generates_and_reports():
    pipe = ToyPipeline.from_config(toy_config())
    methods = applicable_methods(pipe)
    # what needs numbers published for a model refuses without them (MagCache's ratios, PAB's windows, FasterCache's
    # schedules: the family has none), Skip-Cache needs skip branches and DeepCache a UNet; the rest have generic
    # defaults
    assert {name for name, config in methods.items() if config is None} == {"magcache", "pab", "fastercache",
                                                                             "skipcache", "deepcache"}
    assert methods["teacache"].coefficients == (2.0, 0.0)
    runnable = [name for name, config in methods.items() if config is not None]
    runnable += ["fastercache-diffusers", PAB_SPEC]  # given settings: diffusers' FasterCache, PAB's windows
    base = pipe.generate(PROMPT, seed=2)
    assert base.video.shape == (1, 3, 16, 24, 3) and base.stats["steps"] == 8
    reused = {}
    for spec in runnable:
        pipe.set_cache(spec)
        name = next(iter(pipe.transformer.caches))
        out = pipe.generate(PROMPT, seed=2)
        assert out.video.shape == base.video.shape and torch.isfinite(out.latents).all(), name
        assert out.stats[name], name  # each reports what it computed / reused
        reused[name] = not torch.equal(out.latents, base.latents)
    pipe.set_cache("teacache-0.5")  # the published polynomial at a threshold where this tiny model reuses
    out = pipe.generate(PROMPT, seed=2)
    assert out.stats["teacache"]["reused_steps"] > 0
    pipe.set_cache(None)
    assert torch.equal(pipe.generate(PROMPT, seed=2).latents, base.latents)
    assert sum(reused.values()) >= 4, reused  # most methods change the result here: they did act


@pytest.mark.slow
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)], ids=["sp2", "cfg2"])
def test_parallel_equals_one_process(num_gpus, cfg_parallel, one_thread_per_rank):
    from distributed import assert_same_as_single

    from videosys import VideoSysEngine

    run = dict(seed=1, num_frames=3, height=24, width=40)  # 3 x 6 x 10 / sp=2: 180 tokens, padded paths too
    single = ToyPipeline.from_config(toy_config())
    with VideoSysEngine(toy_config(num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for cache in ("none", "teacache-0.5", PAB_SPEC):
            single.set_cache(cache)
            engine.set_cache(cache)
            ref, out = single.generate(PROMPT, **run), engine.generate(PROMPT, **run)
            assert_same_as_single(out, ref, str(cache))


def test_cli_generates_with_the_new_family(tmp_path, capsys):
    from videosys.cli import main
    from videosys.utils.video import read_video

    output = tmp_path / "toy.mp4"
    assert main(["generate", "--model", "toy", "--preset", "tiny", "--prompt", PROMPT, "--cache", "teacache-slow",
                 "--no-progress", "--output", str(output)]) == 0
    frames, fps = read_video(str(output))
    assert frames.shape == (3, 16, 24, 3) and fps == 8
    assert main(["generate", "--model", "toy", "--preset", "tiny", "--prompt", PROMPT, "--height", "20",
                 "--output", str(tmp_path / "bad.mp4")]) != 0
    assert "height=20 must be divisible by 8" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


def test_server_refuses_a_bad_size_before_any_weights_load(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from videosys import VideoSysEngine
    from videosys.serve.app import ApiError, create_app, validate_request

    with pytest.raises(ApiError) as err:  # the config alone: no pipeline, no weights
        validate_request(toy_config(), {"width": 30})
    assert err.value.param == "width"
    with VideoSysEngine(toy_config()) as engine:
        calls = []
        generate = engine.generate
        monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
        with TestClient(create_app(engine, str(tmp_path))) as client:
            bad = client.post("/v1/videos", json={"prompt": PROMPT, "height": 20})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "height"
            assert not calls and client.get("/v1/videos").json()["data"] == []
            fields = {f["name"] for f in client.get("/info").json()["fields"]}
            assert {"num_frames", "height", "width", "negative_prompt"} <= fields
    assert dataclasses.is_dataclass(engine.config)
