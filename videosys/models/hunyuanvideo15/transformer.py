"""HunyuanVideo-1.5 (Tencent, 8.3B; arXiv 2511.18870): 54 double-stream blocks over video and text tokens.

Loads the `transformer/` folder of the hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-* releases unchanged:
the config fields and state-dict keys are those of diffusers' HunyuanVideo15Transformer3DModel.

Architecture (C = model width, N = F * h * w video tokens of a (p_t, p, p) patch; 1 x 1 x 1 in the releases):
- the latents (B, 65, F, H, W) are the noisy latents (32), the condition latents (32: the encoded first frame
  for I2V, zeros for T2V) and a mask channel (1), joined by the pipeline: one Conv3d patch embedding;
- the timestep: sinusoid -> MLP, temb (B, C) (plus a second one of `timestep_r` for the MeanFlow models);
- three kinds of context tokens, each projected to C plus a learned type embedding (cond_type_embed 0 / 1 / 2):
  the LLM text (Qwen2.5-VL hidden states, (B, L1, 3584), with a mask) through a 2-block token refiner
  conditioned on the timestep and the masked-mean-pooled text; the ByT5 glyph text ((B, L2, 1472), with a mask)
  through LayerNorm + 3-layer MLP; the SigLIP image tokens ((B, 729, 1152), all zeros for T2V: then masked
  out) through LayerNorm + MLP + LayerNorm. They are joined as [image; ByT5; LLM], valid tokens first.
- every block (double-stream, diffusers' HunyuanVideo15TransformerBlock; HunyuanVideo-1.5 has no
  single-stream blocks): each stream its own adaLN-Zero modulation, q / k / v (per-head RMSNorm on q and k) and
  MLP; one joint attention over [video; text] with 3D RoPE on the video tokens (theta 256, head channels
  split t / h / w = rope_axes_dim), padding text tokens masked as keys;
- an adaLN final norm and a linear projection, unpatchified.

Text masking: diffusers masks the padding text tokens as queries and as keys; a padding query's output only
feeds the text stream at a padding position, which no valid token attends to and which is never returned,
so we mask keys only (the video output is the same) and drop the padding tokens beyond the longest valid
context of the batch (all of them at batch size 1: no mask at all, and the fused kernels' fast path); an
all-zero `image_embeds` (T2V) drops the image tokens the same way.

Numerics as diffusers: everything in the weights' dtype (diffusers' HunyuanVideo15Transformer3DModel keeps no
module in fp32: no `_keep_in_fp32_modules`), LayerNorms in the model dtype, RMSNorm statistics in fp32, RoPE in
fp32 with fp32 tables.

Sequence parallelism (Ulysses): the video tokens are sharded over the sp group, (B, N/sp, C) (zero-padded when N
does not divide); the text tokens (B, S, C) are replicated on every rank. Everything but attention works token
by token. Joint attention: the video q / k / v (normed per head) switch from sequence- to head-sharded with an
all-to-all ((B, N_local, H, d) -> (B, N, H/sp, d), the padding cut off: never attended), RoPE rotates them with
the complete positions, the text q / k / v keep this rank's heads, [video; text] attend, the video output goes
back with an all-to-all and the text output's heads are gathered (every rank keeps the whole text stream). The
video tokens are gathered before unpatchifying.

Caches (videosys/cache/hooks.py): the block stack carries both streams (video, text) over all `num_layers`
blocks (one unit each). Its indicator is TeaCache4HunyuanVideo's (ali-vilab/TeaCache; the same in LightX2V's
HunyuanTransformerInferTeaCaching and ComfyUI's TeaCache nodes): the first block's timestep-modulated video
input, LayerNorm(x) * (1 + scale_msa) + shift_msa with block 0's img_mod (our transformer_blocks.0.norm1),
(B, N_local, C), this rank's real tokens. (MagCache measures the stack's output residual, not an indicator.)

Module hook points, per block (block kind "double"; the table tests/test_hunyuanvideo15_transformer.py checks):

    block kind | site kind | what it computes                                             | calls per block
    double     | full      | joint attention, ungated, (B, S + N_local, C) text first,     | 1
               |           | output projections and the Ulysses all-to-alls included       |
    double     | mlp       | both streams' MLPs (ff on video, ff_context on text), ungated, | 1
               |           | (B, S + N_local, C) text first                               |

(Both MLPs are one site: a cache keys its state by (kind, block kind, index), so two "mlp" sites in one block
would collide; CogVideoX's joint MLP is one site too.)

SSTA (the release's sparse attention for its 720p sparse checkpoints): not implemented; what matching it would
take is at the end of this docstring.

SSTA, what matching the release on tiny shapes would take (read from Tencent-Hunyuan/HunyuanVideo-1.5 at 60783e7:
hyvideo/models/transformers/modules/ssta_attention.py, attention.py (attn_mode "flex-block-attn"), the defaults in
hunyuanvideo_1_5_transformer.py's attn_param; the kernel is the flex-block-attn package, SM90 only). It is the
attention of the release's "720p_{t2v,i2v}_distilled_sparse" transformers (CFG-distilled; `--sparse_attn`):
- layout: video q / k / v (B, H, N, 128: the release asserts head_dim 128) are zero-padded on t / h / w up to
  whole tiles (tile (6, 8, 8) = 384 tokens; a one-frame input uses (1, 16, 24) tiles and a 1 x 1 x 1 window),
  permuted tile-major (each tile contiguous), and the text (after the valid-first reorder, as here) padded to
  whole 384-token blocks by repeating its last token; attention runs on 384 x 384 blocks of [video tiles; text blocks];
- block mask = STA | MoBA, per sample and, by default (attn_mask_share_within_head 0), per head: STA keeps, for
  each query tile, the 3 x 3 x 3 window of tiles around it (the window centre clamped inside the tile grid);
  MoBA ("importance" sampling, lambda 0.7) pools q and k per tile (mean, fp32), scores each key tile
  lambda * (cos(q_tile, k_tile) + 1) / 2 - (1 - lambda) * mean over the other key tiles of (cos(k_tile, k') + 1) / 2
  and keeps the top-k (64, halved to 32 at <= 31 latent frames; torch.topk, unsorted); text blocks attend to and
  are attended by everything, except text blocks past ceil(valid text tokens / 384), which only attend to
  themselves; within a kept block every token attends (so padding text tokens inside the last valid text block,
  and the zero / repeated padding tokens, ARE attended: not what the dense model does);
- matching on tiny shapes: nothing needs an SM90 kernel: the block mask expanded to tokens and given to SDPA is
  the same attention. A test would import the release's mask builders (create_ssta_3d_mask and the tile /
  untile helpers are plain torch + numpy) or re-derive them, run on a grid of several tiles with small tiles
  (e.g. (1, 2, 2) and a 1 x 1 x 1 or 3 x 3 x 3 window; the release's 384-token tiles need >= 12 x 16 x 16
  latents for a grid of several tiles, still cheap with 2 heads of 128), keep top-k below the number of tiles, and
  use random weights whose pooled scores have no ties (topk tie-breaking is unspecified). Padding rules (zero video
  padding attended, text padded by repetition) must be copied exactly, not "fixed". Under Ulysses the mask is
  per head and the heads are sharded, so each rank builds its heads' masks from the full sequence it holds after
  the all-to-all (the release does the same); tiling is a permutation of the full sequence, so it happens after
  the all-to-all too.
"""

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.attention import Attention, sdpa, HeadParallel
from videosys.models.modules.embeddings import TimestepEmbedding, constant_table, timestep_embedding
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.rope import apply_rope, rope_3d
from videosys.models.modules.text_memo import TextMemo


@dataclass
class HunyuanVideo15TransformerConfig:
    """diffusers' HunyuanVideo15Transformer3DModel config fields; defaults are the 480p T2V release's
    (hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v transformer/config.json, written by diffusers'
    scripts/convert_hunyuan_video1_5_to_diffusers.py, TRANSFORMER_CONFIGS["480p_t2v"]).

    The other releases, per the same table: 480p / 720p I2V: task_type="i2v"; 720p: target_size=960; the
    CFG-distilled ones as their base. use_meanflow=True is read from a checkpoint's config.json (which ones set it
    could not be checked offline): the release's pipeline then passes timestep_r = the next step's timestep (0 at
    the last step). diffusers' own class defaults differ from the 480p T2V release only in task_type="i2v".
    """

    in_channels: int = 65  # 32 noisy latent + 32 condition latent + 1 mask channels
    out_channels: int | None = 32
    num_attention_heads: int = 16
    attention_head_dim: int = 128
    num_layers: int = 54  # double-stream blocks (there are no single-stream blocks in 1.5)
    num_refiner_layers: int = 2  # the LLM text's token-refiner blocks
    mlp_ratio: float = 4.0
    patch_size: int = 1
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    text_embed_dim: int = 3584  # Qwen2.5-VL-7B hidden size
    text_embed_2_dim: int = 1472  # ByT5-small (Glyph-SDXL-v2) d_model
    image_embed_dim: int = 1152  # SigLIP (so400m-patch14-384) hidden size
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)  # head channels rotated by t / h / w positions
    target_size: int = 640  # the pipeline's resolution bucket in pixels (unused by the transformer)
    task_type: str = "t2v"  # "t2v" | "i2v" (unused by the transformer: the inputs decide)
    use_meanflow: bool = False  # a second timestep embedding of `timestep_r`

    def __post_init__(self):
        self.rope_axes_dim = tuple(self.rope_axes_dim)  # config.json stores a list
        if self.qk_norm != "rms_norm":
            raise ValueError(f"unsupported qk_norm {self.qk_norm!r} (HunyuanVideo-1.5 uses 'rms_norm')")
        if len(self.rope_axes_dim) != 3 or sum(self.rope_axes_dim) != self.attention_head_dim:
            raise ValueError(f"rope_axes_dim {self.rope_axes_dim} must be 3 parts summing to attention_head_dim="
                             f"{self.attention_head_dim}")
        if any(d % 2 for d in self.rope_axes_dim):
            raise ValueError(f"rope_axes_dim {self.rope_axes_dim}: RoPE rotates channel pairs, each part must be even")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ---- layers -----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Per-head RMSNorm with key `weight`, diffusers' order of operations: the mean square in fp32, x scaled in
    fp32, cast to a half weight's dtype before the weight multiplies (so bf16 matches diffusers)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


class ActProj(nn.Module):
    """Linear then an activation (key proj): diffusers' GELU(approximate="tanh") / LinearActivation("silu")."""

    def __init__(self, dim_in: int, dim_out: int, activation: str):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return F.silu(x) if self.activation == "silu" else F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """Linear -> activation -> Linear with keys net.0.proj / net.2 (diffusers' FeedForward)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu_tanh"):
        super().__init__()
        self.net = nn.ModuleList([ActProj(dim, hidden, activation), nn.Dropout(0.0), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class AdaNormZero(nn.Module):
    """adaLN-Zero (key linear; diffusers' AdaLayerNormZero with norm_type="layer_norm"): SiLU(temb) -> Linear ->
    shift / scale / gate of the attention, then of the MLP; the LayerNorm has no weights (eps 1e-6)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def modulation(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, C) -> 6 tensors (B, 1, C): shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp."""
        return tuple(m[:, None] for m in self.linear(F.silu(temb)).chunk(6, dim=1))

    def modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + scale) + shift


class JointAttention(nn.Module):
    """The double-stream block's attention: video projections to_q / to_k / to_v / to_out.0 with norm_q / norm_k,
    text projections add_q_proj / add_k_proj / add_v_proj / to_add_out with norm_added_q / norm_added_k (diffusers'
    Attention with added_kv_proj_dim and qk_norm="rms_norm")."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.add_q_proj, self.add_k_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.add_v_proj = nn.Linear(dim, inner)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(inner, dim)

    def heads_of(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim)  # (B, n, H, d)


# ---- the block ------------------------------------------------------------------------------------------------


class HunyuanVideo15Block(nn.Module):
    """Double-stream block: per stream adaLN-Zero (norm1 / norm1_context), joint attention (attn), LayerNorm +
    modulation (norm2 / norm2_context, no weights) and MLP (ff / ff_context): diffusers'
    HunyuanVideo15TransformerBlock keys.

    `index` names the block at the caches' module hook points. compile=True (models/modules/compile.py) compiles
    `forward` whole when no module hook is active, else the branch methods (`compiled_methods`).
    """

    compiled_block = "forward"
    compiled_methods = ("joint_attention", "mlp_branch")

    def __init__(self, cfg: HunyuanVideo15TransformerConfig, index: int = 0):
        super().__init__()
        self.index = index
        dim, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = AdaNormZero(dim)
        self.norm1_context = AdaNormZero(dim)
        self.attn = JointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = MLP(dim, hidden)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = MLP(dim, hidden)

    def joint_attention(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None,
                        rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int, sp_group=None) -> torch.Tensor:
        """Modulated video (B, N_local, C) and text (B, S, C) -> (B, S + N_local, C) attention outputs, text first.

        `mask` (B, 1, 1, N + S) bool (True = attend) masks padding text keys; None: every token is real.
        Ulysses over `sp_group`: video q / k / v all-to-all to head shards over the N = `num_tokens` real tokens."""
        attn = self.attn
        sp, rank = comm.group_size(sp_group), comm.group_rank(sp_group)
        heads = attn.heads // sp
        video = []
        for proj, norm in ((attn.to_q, attn.norm_q), (attn.to_k, attn.norm_k), (attn.to_v, None)):
            t = attn.heads_of(proj(x))  # (B, N_local, H, d)
            t = t if norm is None else norm(t)
            t = comm.all_to_all(t, sp_group, scatter_dim=2, gather_dim=1, gather_size=num_tokens)  # (B, N, H/sp, d)
            video.append(t.transpose(1, 2))  # (B, H_local, N, d)
        video[0], video[1] = apply_rope(video[0], *rotary), apply_rope(video[1], *rotary)  # complete positions
        joint = []
        for t_video, proj, norm in zip(video, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                                       (attn.norm_added_q, attn.norm_added_k, None)):
            t = attn.heads_of(proj(text))  # (B, S, H, d): replicated
            t = t if norm is None else norm(t)
            t = t[:, :, rank * heads:(rank + 1) * heads].transpose(1, 2)  # (B, H_local, S, d): this rank's heads
            joint.append(torch.cat([t_video, t], dim=2))  # (B, H_local, N + S, d)
        q, k, v = joint
        out = sdpa(q, k, v, mask).transpose(1, 2)  # (B, N + S, H_local, d)
        n, b, s = num_tokens, x.shape[0], text.shape[1]
        video_out = comm.all_to_all(out[:, :n], sp_group, scatter_dim=1, gather_dim=2)  # (B, N_local, H, d)
        text_out = comm.gather(out[:, n:], 2, sp_group)  # (B, S, H, d)
        video_out = attn.to_out[0](video_out.reshape(b, video_out.shape[1], -1))  # (B, N_local, C)
        text_out = attn.to_add_out(text_out.reshape(b, s, -1))  # (B, S, C)
        return torch.cat([text_out, video_out], dim=1)

    def mlp_branch(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Modulated video (B, N_local, C) and text (B, S, C) through their own MLPs -> (B, S + N_local, C)."""
        return torch.cat([self.ff_context(text), self.ff(x)], dim=1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor], hooks: ModuleHooks | None = None,
                num_tokens: int | None = None, sp_group=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N_local, C) video, text (B, S, C), temb (B, C) -> (x, text)."""
        s = text.shape[1]
        mod = self.norm1.modulation(temb)  # 6 x (B, 1, C)
        cmod = self.norm1_context.modulation(temb)
        x_in = self.norm1.modulate(x, mod[0], mod[1])
        text_in = self.norm1_context.modulate(text, cmod[0], cmod[1])
        # cache hook points on the ungated outputs: a reused attention skips its compute and, under Ulysses, its
        # all-to-alls
        out = module_call(hooks, "full", self.index, lambda: self.joint_attention(
            x_in, text_in, mask, rotary, num_tokens or x.shape[1], sp_group), block="double")  # (B, S + N_local, C)
        x = x + out[:, s:] * mod[2]
        text = text + out[:, :s] * cmod[2]

        x_in = self.norm2(x) * (1 + mod[4]) + mod[3]
        text_in = self.norm2_context(text) * (1 + cmod[4]) + cmod[3]
        out = module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x_in, text_in),
                          block="double")  # (B, S + N_local, C)
        return x + mod[5] * out[:, s:], text + cmod[5] * out[:, :s]


# ---- embeddings ----------------------------------------------------------------------------------------------


class TextProjection(nn.Module):
    """Linear -> SiLU -> Linear (keys linear_1 / linear_2; diffusers' PixArtAlphaTextProjection(act_fn="silu"))."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """The token refiner's conditioning: timestep MLP + pooled-text MLP (keys timestep_embedder.*, text_embedder.*;
    diffusers' CombinedTimestepTextProjEmbeddings)."""

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.text_embedder = TextProjection(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(timestep, 256, flip_sin_to_cos=True, freq_shift=0)  # (B, 256) fp32
        return self.timestep_embedder(freq.to(pooled.dtype)) + self.text_embedder(pooled)  # (B, C)


class RefinerBlock(nn.Module):
    """Self-attention over the text tokens and an MLP, gated by the conditioning (keys norm1, attn.*, norm2,
    ff.net.*, norm_out.linear; diffusers' HunyuanVideo15IndividualTokenRefinerBlock)."""

    def __init__(self, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        dim = heads * head_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, head_dim, bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = MLP(dim, int(dim * mlp_ratio), activation="silu")
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(dim, 2 * dim)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """h (B, L, C), cond (B, C), mask (B, L) bool keys (None: all real) -> (B, L, C)."""
        gate_msa, gate_mlp = (g[:, None] for g in self.norm_out.linear(F.silu(cond)).chunk(2, dim=1))  # (B, 1, C)
        h = h + self.attn(self.norm1(h), mask=mask) * gate_msa
        return h + self.ff(self.norm2(h)) * gate_mlp


class TokenRefiner(nn.Module):
    """The LLM text (B, L, text_embed_dim) -> (B, L, C): proj_in, then refiner blocks conditioned on the timestep and
    the masked mean of the text (keys time_text_embed.*, proj_in, token_refiner.refiner_blocks.N.*; diffusers'
    HunyuanVideo15TokenRefiner)."""

    def __init__(self, cfg: HunyuanVideo15TransformerConfig):
        super().__init__()
        dim = cfg.dim
        self.time_text_embed = TimeTextEmbedding(dim, cfg.text_embed_dim)
        self.proj_in = nn.Linear(cfg.text_embed_dim, dim)
        self.token_refiner = nn.Module()
        self.token_refiner.refiner_blocks = nn.ModuleList(
            RefinerBlock(cfg.num_attention_heads, cfg.attention_head_dim, cfg.mlp_ratio)
            for _ in range(cfg.num_refiner_layers))

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            pooled = text.mean(dim=1)
        else:
            weight = mask.float()[..., None]  # (B, L, 1)
            pooled = ((text * weight).sum(dim=1) / weight.sum(dim=1)).to(text.dtype)  # (B, text_embed_dim)
            mask = mask.bool()
        cond = self.time_text_embed(timestep, pooled)  # (B, C)
        h = self.proj_in(text)
        for block in self.token_refiner.refiner_blocks:
            h = block(h, cond, mask)
        return h


class ByT5Projection(nn.Module):
    """ByT5 glyph-text features -> C: LayerNorm -> Linear -> GELU -> Linear -> GELU -> Linear, hidden width 2048
    (keys norm, linear_1..3; diffusers' HunyuanVideo15ByT5TextProjection)."""

    def __init__(self, in_features: int, dim: int, hidden: int = 2048):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.linear_1(self.norm(x)))
        return self.linear_3(F.gelu(self.linear_2(x)))


class ImageProjection(nn.Module):
    """SigLIP image tokens -> C: LayerNorm -> Linear -> GELU -> Linear -> LayerNorm (keys norm_in, linear_1,
    linear_2, norm_out; diffusers' HunyuanVideo15ImageProjection)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(in_features)
        self.linear_1 = nn.Linear(in_features, in_features)
        self.linear_2 = nn.Linear(in_features, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.linear_2(F.gelu(self.linear_1(self.norm_in(x)))))


class TimeEmbedding(nn.Module):
    """Sinusoid (256, [cos | sin]) -> MLP (key timestep_embedder.*), plus timestep_embedder_r.* of `timestep_r`
    for the MeanFlow models (diffusers' HunyuanVideo15TimeEmbedding)."""

    def __init__(self, dim: int, use_meanflow: bool):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.timestep_embedder_r = TimestepEmbedding(256, dim) if use_meanflow else None

    @staticmethod
    def embed(mlp: TimestepEmbedding, t: torch.Tensor) -> torch.Tensor:
        return mlp(timestep_embedding(t, 256, flip_sin_to_cos=True, freq_shift=0).to(mlp.linear_1.weight.dtype))

    def forward(self, timestep: torch.Tensor, timestep_r: torch.Tensor | None = None) -> torch.Tensor:
        temb = self.embed(self.timestep_embedder, timestep)  # (B, C)
        if timestep_r is not None:
            if self.timestep_embedder_r is None:
                raise ValueError("timestep_r given to a transformer without use_meanflow")
            temb = temb + self.embed(self.timestep_embedder_r, timestep_r)
        return temb


@constant_table
def hv15_rotary_table(axes_dim: tuple[int, int, int], frames: int, h: int, w: int, theta: float,
                      device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin, each (F * h * w, head_dim) fp32, interleaved pairs, channels [t | h | w] of `axes_dim`, tokens in
    (F, h, w) row-major order, positions 0.. on every axis; angles in fp32 (diffusers' get_1d_rotary_pos_embed)."""
    cos, sin = rope_3d(axes_dim, *(torch.arange(n, dtype=torch.float32) for n in (frames, h, w)), theta=theta)
    return cos.to(device), sin.to(device)


# ---- the model -------------------------------------------------------------------------------------------------


class HunyuanVideo15Transformer3DModel(HeadParallel, PretrainedModel, CacheMixin):
    config_class = HunyuanVideo15TransformerConfig
    class_name = "HunyuanVideo15Transformer3DModel"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)
    # what diffusers keeps in fp32 in a lower precision: nothing (HunyuanVideo15Transformer3DModel sets no
    # _keep_in_fp32_modules; its _skip_layerwise_casting_patterns only concern layerwise casting)
    keep_in_fp32 = ()

    def __init__(self, config: HunyuanVideo15TransformerConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.out_channels = config.out_channels or config.in_channels
        p = (config.patch_size_t, config.patch_size, config.patch_size)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(config.in_channels, dim, kernel_size=p, stride=p)
        self.image_embedder = ImageProjection(config.image_embed_dim, dim)
        self.context_embedder = TokenRefiner(config)
        self.context_embedder_2 = ByT5Projection(config.text_embed_2_dim, dim)
        self.time_embed = TimeEmbedding(dim, config.use_meanflow)
        self.cond_type_embed = nn.Embedding(3, dim)  # 0: LLM text, 1: ByT5 glyph text, 2: image tokens
        self.transformer_blocks = nn.ModuleList(HunyuanVideo15Block(config, i) for i in range(config.num_layers))
        self.norm_out = nn.Module()  # adaLN final norm (diffusers' AdaLayerNormContinuous): scale, then shift
        self.norm_out.linear = nn.Linear(dim, 2 * dim)
        self.norm_out.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, math.prod(p) * self.out_channels)
        self.byt5_memo = TextMemo()  # the glyph text's projection, once per generation
        self.image_memo = TextMemo()  # the image tokens' projection, once per generation
        self.parallel = ParallelState()

    # ---- loading -------------------------------------------------------------------------------------------
    # ---- conditioning --------------------------------------------------------------------------------------
    def rotary_table(self, frames: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin, each (F * h * w, head_dim) fp32 over the latent grid."""
        cfg = self.config
        return hv15_rotary_table(cfg.rope_axes_dim, frames, h, w, float(cfg.rope_theta), str(device))

    @torch.compiler.disable  # host-side decisions on tensor values: kept out of compiled graphs, no graph-break noise
    def context_layout(self, b: int, image_embeds: torch.Tensor | None, lengths: tuple[int, int, int],
                       text_mask_2: torch.Tensor | None,
                       text_mask: torch.Tensor | None) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
        """Where the context tokens go: (use the image tokens, gather index (B, S) into [image; ByT5; LLM] or None,
        key mask (B, S) bool or None). `lengths`: the image, ByT5 and LLM token counts (0: not given).

        All-zero image_embeds (T2V; diffusers' is_t2v, over the whole batch) are masked in diffusers: left out here.
        Each sample's valid tokens first, in order (a stable sort of the joined mask), cut after the batch's
        longest valid context."""
        use_image = image_embeds is not None and not bool(torch.all(image_embeds == 0))
        masks = [(lengths[0] if use_image else 0, None), (lengths[1], text_mask_2), (lengths[2], text_mask)]
        if all(m is None for _, m in masks):
            return use_image, None, None
        device = text_mask.device if text_mask is not None else text_mask_2.device
        mask = torch.cat([torch.ones(b, n, dtype=torch.bool, device=device) if m is None else m.bool()
                          for n, m in masks if n], dim=1)  # (B, S_all)
        if bool(mask.all()):
            return use_image, None, None
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # valid tokens first, in order
        order = order[:, :int(mask.sum(dim=1).max())]  # (B, S)
        mask = torch.gather(mask, 1, order)  # (B, S)
        return use_image, order, None if bool(mask.all()) else mask

    def context(self, timestep: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                text_2: torch.Tensor | None, text_mask_2: torch.Tensor | None,
                image_embeds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text stream's input (B, S, C) and its key mask (B, S) bool (None: all real), laid out as diffusers
        joins them: [image; ByT5; LLM] tokens, each sample's valid ones first (`context_layout`)."""
        lengths = (0 if image_embeds is None else image_embeds.shape[1], 0 if text_2 is None else text_2.shape[1],
                   text.shape[1])
        use_image, order, mask = self.context_layout(text.shape[0], image_embeds, lengths, text_mask_2, text_mask)
        weight = self.cond_type_embed.weight
        parts = []
        if use_image:
            parts.append(self.image_memo(image_embeds, self.image_embedder) + weight[2])  # (B, L3, C)
        if text_2 is not None:
            parts.append(self.byt5_memo(text_2, self.context_embedder_2) + weight[1])  # (B, L2, C)
        parts.append(self.context_embedder(text, timestep, text_mask) + weight[0])  # (B, L1, C): per step
        context = torch.cat(parts, dim=1)  # (B, S_all, C)
        if order is not None:
            context = torch.gather(context, 1, order[..., None].expand(-1, -1, context.shape[-1]))  # (B, S, C)
        return context, mask

    # ---- forward ---------------------------------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor | None,
                   rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int, start: int = 0,
                   stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks start .. stop-1 on video (B, N_local, C) and text (B, S, C): the one place the streams change."""
        sp_group = self.parallel.sp_group
        hooks = self.module_hooks()
        for block in self.transformer_blocks[start:stop]:
            x, text = block(x, text, temb, mask, rotary, hooks=hooks, num_tokens=num_tokens, sp_group=sp_group)
        return x, text

    def cache_indicator(self, x: torch.Tensor, temb: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """TeaCache4HunyuanVideo's indicator: block 0's modulated video input, (B, N_real_local, C), this rank's
        real tokens only."""
        norm1 = self.transformer_blocks[0].norm1
        shift, scale = norm1.modulation(temb)[:2]
        start, stop = comm.shard_range(num_tokens, self.parallel.sp_size, self.parallel.sp_rank)
        return norm1.modulate(x[:, : stop - start], shift, scale)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, timestep_r: torch.Tensor | None = None,
                encoder_hidden_states_2: torch.Tensor | None = None,
                encoder_attention_mask_2: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, F, H, W) latents ([noisy | condition | mask] channels), timesteps (B,) or scalar, the LLM text
        (B, L1, text_embed_dim) with its mask (B, L1) (1 = real), optional timestep_r (B,) (MeanFlow), the ByT5
        glyph text (B, L2, text_embed_2_dim) with its mask (B, L2), the SigLIP image tokens (B, L3, image_embed_dim)
        (all zeros or None for T2V) -> (B, C_out, F, H, W)."""
        b, _, frames, height, width = hidden_states.shape
        cfg = self.config
        p_t, p = cfg.patch_size_t, cfg.patch_size
        f, h, w = frames // p_t, height // p, width // p
        n = f * h * w
        sp_group = self.parallel.sp_group

        timestep = timestep.reshape(-1).expand(b)
        if timestep_r is not None:
            timestep_r = timestep_r.reshape(-1).expand(b)
        temb = self.time_embed(timestep, timestep_r)  # (B, C)
        x = self.x_embedder.proj(hidden_states).flatten(2).transpose(1, 2)  # (B, N, C)
        x = comm.split(x, 1, sp_group)  # (B, N_local, C): this rank's tokens, zero-padded to divide
        text, text_mask = self.context(timestep, encoder_hidden_states, encoder_attention_mask,
                                       encoder_hidden_states_2, encoder_attention_mask_2, image_embeds)  # (B, S, C)
        mask = None
        if text_mask is not None:  # keys of [video; text]: every video token real, padding text masked
            mask = F.pad(text_mask, (n, 0), value=True)[:, None, None]  # (B, 1, 1, N + S)
        rotary = self.rotary_table(f, h, w, x.device)
        blocks = partial(self.run_blocks, temb=temb, mask=mask, rotary=rotary, num_tokens=n)

        # the block-stack hook point, both streams (TeaCache4HunyuanVideo's indicator: block 0's modulated input)
        x, text = self.cache_stack(blocks, x, text, indicator=partial(self.cache_indicator, x, temb, n),
                                   num_units=cfg.num_layers)

        scale, shift = self.norm_out.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=1)  # (B, C) each
        x = self.norm_out.norm(x) * (1 + scale)[:, None] + shift[:, None]
        x = self.proj_out(x)  # (B, N_local, C_out * p_t * p * p)
        x = comm.gather(x, 1, sp_group, size=n)  # (B, N, C_out * p_t * p * p)
        x = x.reshape(b, f, h, w, self.out_channels, p_t, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, self.out_channels, f * p_t, h * p, w * p)  # (B, C_out, F, H, W)
