"""Skip-DiT's Latte (skip branches, a config field of our Latte transformer): fusion maths, the published
Latte-skip.pt layout, save / load."""

import math

import pytest
import torch

from tests.layout import assert_same_layout, reference_keys
from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig
from videosys.models.modules.pretrained import CheckpointMismatchError

CFG = dict(num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, caption_channels=8, sample_size=8)


def skip_model(num_layers: int = 5, seed: int = 0) -> LatteTransformer3DModel:
    """Every weight drawn (the skip norms' affine too, so they are not the identity)."""
    model = LatteTransformer3DModel(LatteTransformerConfig(**CFG, num_layers=num_layers, skip_connections=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if name.endswith("skip_norms.0.weight") else 0.0))
    return model.eval()


def inputs(frames: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, frames, 8, 8, generator=g), torch.tensor([7, 500]), torch.randn(2, 3, 8, generator=g)


def hand_written_forward(model, x, t, text):
    """The authors' loop (latte_t2v_skip.py) written out: outputs of units < L//2 pushed on a stack, popped
    before each unit i >= L - L//2 into h = W @ LN(cat[h, skip]) + b, LN by its formula in fp32."""
    cfg = model.config
    b, c, f, height, width = x.shape
    h = model.pos_embed(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, height, width)).view(b, f, -1, 16)
    t_mod, t_emb = model.adaln_single(t, h.dtype)
    context = model.caption_projection(text)
    stack = []
    for i in range(cfg.num_layers):
        if i >= cfg.num_layers - cfg.num_layers // 2:
            j = i - (cfg.num_layers - cfg.num_layers // 2)
            cat = torch.cat([h, stack.pop()], dim=-1).double()
            mean, var = cat.mean(-1, keepdim=True), cat.var(-1, unbiased=False, keepdim=True)
            norm = model.skip_norms[j]
            normed = (cat - mean) / torch.sqrt(var + 1e-6) * norm.weight.double() + norm.bias.double()
            lin = model.skip_linears[j].linear
            h = (normed @ lin.weight.double().T + lin.bias.double()).float()
        h = model.transformer_blocks[i](h, t_mod, context)
        if i == 0:
            h = h + model.temporal_pos_embed(f, h.device)
        h = model.temporal_transformer_blocks[i](h, t_mod, num_frames=f)
        if i < cfg.num_layers // 2:
            stack.append(h)
    from videosys.models.modules.adaln import modulate, modulation

    shift, scale = modulation(model.scale_shift_table, t_emb, token_dims=2)
    out = model.proj_out(modulate(model.norm_out(h), shift, scale))
    p = cfg.patch_size
    out = out.view(b, f, height // p, width // p, p, p, -1).permute(0, 6, 1, 2, 4, 3, 5)
    return out.reshape(b, -1, f, height, width)


@pytest.mark.parametrize("num_layers", [4, 5])  # an odd depth: the middle unit has no branch
def test_skip_fusion_matches_hand_written_maths(num_layers):
    model = skip_model(num_layers)
    assert len(model.skip_linears) == num_layers // 2
    x, t, text = inputs()
    with torch.no_grad():
        ours = model(x, t, text)
        ref = hand_written_forward(model, x, t, text)
        # the branches matter: without them (the same weights) the output differs
        plain = LatteTransformer3DModel(LatteTransformerConfig(**CFG, num_layers=num_layers)).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("skip_")})
        without = plain(x, t, text)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - without).abs().max() > 1e-2


def test_fusion_norm_runs_in_fp32():
    model = skip_model(4).to(torch.bfloat16)
    h = torch.randn(1, 2, 3, 16).to(torch.bfloat16) * 100 + 3000  # large offset: a bf16 mean would lose it
    skip = torch.randn(1, 2, 3, 16).to(torch.bfloat16)
    with torch.no_grad():
        out = model.fuse_skip(2, h, skip)
        norm, lin = model.skip_norms[0], model.skip_linears[0].linear
        normed = torch.nn.functional.layer_norm(torch.cat([h, skip], -1).float(), (32,), norm.weight.float(),
                                                norm.bias.float(), 1e-6).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, lin(normed))


def test_partial_runs_compose_and_refuse_a_missing_skip():
    model = skip_model(4)
    x, t, text = inputs()
    with torch.no_grad():
        full = model(x, t, text)
        seen = {}

        def split_stack(run, x, indicator, num_units):
            seen["units"] = num_units
            return run(run(x, start=0, stop=3), start=3)  # unit 3 fuses unit 0's output from the first run

        model.cache_stack = split_stack
        assert torch.equal(model(x, t, text), full)

        model.cache_stack = lambda run, x, indicator, num_units: run(x, start=2)  # no shallow unit ran
        with pytest.raises(RuntimeError, match="unit 1's output"):
            model(x, t, text)
    assert seen["units"] == 4


def test_layout_matches_the_published_latte_skip_checkpoint():
    with torch.device("meta"):
        model = LatteTransformer3DModel(LatteTransformerConfig(skip_connections=True))  # Latte-1 + branches
    expected = reference_keys("latte_skip_t2v_state_dict.txt")
    assert len(expected) == 1023
    ours = assert_same_layout(model, expected)
    assert sum(math.prod(s) for s in ours.values()) == 1_094_486_432


def test_from_skip_dit_reads_the_training_checkpoint(tmp_path):
    model = skip_model(4)
    config = model.config
    decoy = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    path = tmp_path / "Latte-skip.pt"
    torch.save({"ema": model.state_dict(), "model": decoy, "opt": {}}, path)  # sample_t2v.py prefers "ema"
    again = LatteTransformer3DModel.from_skip_dit(str(path), config)
    x, t, text = inputs()
    with torch.no_grad():
        assert torch.equal(again(x, t, text), model(x, t, text))

    torch.save({"model": {k: v for k, v in model.state_dict().items() if "skip_linears.1" not in k}}, path)
    with pytest.raises(CheckpointMismatchError, match="skip_linears.1.linear"):
        LatteTransformer3DModel.from_skip_dit(str(path), config)
    with pytest.raises(ValueError, match="skip_connections=True"):
        LatteTransformer3DModel.from_skip_dit(str(path), LatteTransformerConfig(**CFG, num_layers=4))


def test_from_skip_dit_accepts_the_authors_null_caption_buffer(tmp_path):
    """The authors' training saves LatteT2V_skip.state_dict() (diffusers 0.24), which holds the class-dropout null
    caption `caption_projection.y_embedding` (120 x caption_channels, never read at inference): accepted by name
    and dropped; any other key the model lacks is still refused."""
    model = skip_model(4)
    state = dict(model.state_dict(), **{"caption_projection.y_embedding": torch.randn(120, CFG["caption_channels"])})
    path = tmp_path / "Latte-skip.pt"
    torch.save({"ema": state}, path)
    again = LatteTransformer3DModel.from_skip_dit(str(path), model.config)
    x, t, text = inputs()
    with torch.no_grad():
        assert torch.equal(again(x, t, text), model(x, t, text))
    torch.save({"ema": dict(state, **{"caption_projection.y_embedding_2": torch.zeros(1)})}, path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): caption_projection.y_embedding_2"):
        LatteTransformer3DModel.from_skip_dit(str(path), model.config)


def test_save_load_roundtrip(tmp_path):
    model = skip_model(4)
    model.save_pretrained(str(tmp_path))
    again = LatteTransformer3DModel.from_pretrained(str(tmp_path))
    assert again.config.skip_connections and len(again.skip_linears) == 2
    x, t, text = inputs()
    with torch.no_grad():
        assert (again(x, t, text) - model(x, t, text)).abs().max() <= 1e-6


def test_pipeline_takes_the_transformer_from_a_skip_dit_checkpoint(tmp_path):
    """LatteConfig(model_path=<Latte folder>, skip_dit_checkpoint=<Latte-skip.pt>): the authors' sampling setup."""
    import dataclasses

    from videosys import LatteConfig, LattePipeline

    base = LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
    base.save_pretrained(str(tmp_path / "latte"))
    skip = LatteTransformer3DModel(dataclasses.replace(base.transformer.config, skip_connections=True))
    torch.save({"ema": skip.state_dict()}, tmp_path / "Latte-skip.pt")
    config = LatteConfig(model_path=str(tmp_path / "latte"), preset="tiny", progress_bar=False,
                         skip_dit_checkpoint=str(tmp_path / "Latte-skip.pt"), cache="skipcache")
    pipe = LattePipeline.from_config(config)
    assert pipe.transformer.config.skip_connections
    assert torch.equal(pipe.transformer.skip_linears[0].linear.weight, skip.skip_linears[0].linear.weight)
    out = pipe.generate("a red circle moving to the right", num_frames=2, height=32, width=32, num_inference_steps=6)
    assert out.stats["skipcache"]["reused_steps"] > 0
