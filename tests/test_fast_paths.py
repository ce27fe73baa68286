"""Eager fast paths, same maths: fused q/k/v GEMM (official keys kept), text K/V once per generation, the GELU of
a fresh projection in place."""

import copy
import pickle

import torch

from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig
from videosys.models.modules.attention import FeedForward, Mlp
from videosys.models.open_sora.transformer import STDiT3, STDiT3Config

CFG = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, cross_attention_dim=32,
           caption_channels=24, sample_size=8, video_length=3)


def latte(seed: int = 0) -> LatteTransformer3DModel:
    torch.manual_seed(seed)
    return LatteTransformer3DModel(LatteTransformerConfig(**CFG)).eval()


def test_fused_qkv_keeps_official_keys_and_round_trips():
    model = latte()
    keys = set(model.state_dict())
    assert "transformer_blocks.0.attn1.to_q.weight" in keys and not any("qkv" in k for k in keys)
    attn = model.transformer_blocks[0].attn1
    weight, bias = attn.qkv_fused
    assert attn.to_k.weight.data_ptr() == weight[32:].data_ptr()  # a view of the fused buffer, no copy
    # a state dict round trip (copy and assign, then a dtype move) keeps the weights and the fusion
    for assign in (False, True):
        other = latte(seed=1)
        other.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=assign)
        other.double()
        a = other.transformer_blocks[0].attn1
        assert a.to_v.weight.data_ptr() == a.qkv_fused[0][64:].data_ptr()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(other.state_dict()[k], v.double(), rtol=0, atol=0)
    # a deepcopy or pickle round trip stays fused: editing the copy's parameters reaches its GEMM
    for clone in (copy.deepcopy(attn), pickle.loads(pickle.dumps(attn))):
        assert clone.to_q.weight.data_ptr() == clone.qkv_fused[0].data_ptr() != weight.data_ptr()
        with torch.no_grad():
            clone.to_v.weight.add_(1.0)
        assert torch.equal(clone.qkv_fused[0][64:], clone.to_v.weight)
    # one GEMM (autograd off) equals the three separate ones (autograd on)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        fused = attn(x)
    separate = attn(x)
    torch.testing.assert_close(fused, separate.detach(), rtol=1e-6, atol=1e-6)
    separate.sum().backward()  # gradients reach the official parameters
    assert attn.to_q.weight.grad is not None and attn.to_q.weight.grad.abs().sum() > 0


def test_text_kv_projected_once_per_text_exactly():
    model = latte()
    calls = []
    model.caption_projection.register_forward_hook(lambda *_: calls.append(1))
    for blk in model.transformer_blocks:
        blk.attn2.to_k.register_forward_hook(lambda *_: calls.append(2))
    g = torch.Generator().manual_seed(0)
    text, other_text = torch.randn(2, 7, 24, generator=g), torch.randn(2, 7, 24, generator=g)
    xs = [torch.randn(2, 4, 3, 8, 8, generator=g) for _ in range(3)]
    t = torch.tensor([500, 500])
    with torch.no_grad():
        reference = [model(x, t, text) for x in xs]  # autograd off, memo on
    with torch.enable_grad():  # memo off: everything recomputed
        plain = [model(x, t, text).detach() for x in xs]
    assert calls.count(1) == 1 + 3 and calls.count(2) == 2 * (1 + 3)  # once with the memo, every call without
    for a, b in zip(reference, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the cond half (a new view of the same memory) and a new text are new keys
        half = model(xs[0][1:], t[1:], text.chunk(2)[1])
        new = model(xs[0], t, other_text)
        edited = text.clone()
        assert torch.equal(model(xs[0], t, edited), reference[0])
    torch.testing.assert_close(half, reference[0][1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(new, reference[0], atol=1e-3)
    with torch.no_grad():  # an in-place edit of a tracked tensor is seen
        edited = text.clone()
        first = model(xs[0], t, edited)
        edited[0, 0] += 3.0
        assert not torch.allclose(model(xs[0], t, edited), first, atol=1e-4)
    model.cache_begin([1.0])  # a new generation forgets the memos
    assert not model.text_memo.entries and not model.transformer_blocks[0].attn2.kv_memo.entries


def test_open_sora_cross_kv_memo_matches_recompute():
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(depth=1, hidden_size=32, num_heads=2, caption_channels=24, model_max_length=6,
                                input_size=(2, 8, 8))).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(2, 1, 6, 24, generator=g)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        first, second = model(x, t, y), model(x * 0.5, t, y)
    assert len(model.spatial_blocks[0].cross_attn.kv_memo.entries) == 1
    with torch.enable_grad():
        torch.testing.assert_close(second, model(x * 0.5, t, y).detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)


def test_gelu_in_place_only_on_fresh_outputs_and_never_under_autograd():
    """FeedForward / Mlp with autograd off run the GELU in place on their fc1 output: the values of F.gelu, the
    input untouched; with autograd on the GELU is out of place and gradients flow."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3
    kept = x.clone()
    for layer in (FeedForward(16), Mlp(16, 48)):
        fc1, fc2 = (layer.net[0].proj, layer.net[2]) if isinstance(layer, FeedForward) else (layer.fc1, layer.fc2)
        expected = fc2(torch.nn.functional.gelu(fc1(x), approximate="tanh"))
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        assert torch.equal(x, kept)
        x_grad = x.clone().requires_grad_()
        layer(x_grad).sum().backward()
        expected_grad = torch.autograd.grad(
            fc2(torch.nn.functional.gelu(fc1(x_grad), approximate="tanh")).sum(), x_grad)[0]
        torch.testing.assert_close(x_grad.grad, expected_grad)
