"""Open-Sora-Plan v1.2 OpenSoraT2V: a DiT with full 3D attention over every video token.

Loads the transformer folders of LanguageBind/Open-Sora-Plan-v1.2.0 (29x480p, 29x720p, 93x480p,
93x720p) unchanged: config.json fields and state-dict keys are the release's (OpenSoraT2V-ROPE-L/122,
opensora/models/diffusion/opensora/modeling_opensora.py at tag v1.2.0).

Each block: adaLN-single modulated self-attention over all T*H*W tokens with 3D RoPE, cross-attention
to the (projected) mT5 tokens, modulated MLP. No positional parameters: RoPE splits the head dim in
three (t, y, x), rotate_half inside each part, positions divided by the interpolation scales.

Tokens are (B, N, C), N = T * h * w in (t, y, x) row-major order. With sequence parallelism
(Ulysses) the tokens are sharded over the sp group, (B, N/sp, C); self-attention switches q / k / v
from sequence- to head-sharded with an all-to-all and back (heads % sp == 0); cross-attention and
the MLP are per token, the text is replicated.
"""

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.adaln import modulate, modulation
from videosys.models.modules.attention import Attention, FeedForward, sdpa
from videosys.models.modules.embeddings import AdaLNSingle, CaptionProjection, constant_table
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.text_memo import TextMemo, TextMemoMixin
from videosys.models.modules.rope import apply_rope_halves, rope_3d_halves

MASK_BIAS = -10000.0  # the release's additive bias for masked text tokens (not -inf)


@dataclass
class OpenSoraT2VConfig:
    """OpenSoraT2V config.json fields; defaults are LanguageBind/Open-Sora-Plan-v1.2.0's 29x720p config.

    Fields the release writes but that change nothing at inference (attention_mode, use_stable_fp32,
    norm_num_groups, ...) are kept so the official config.json loads without warnings.
    """

    num_attention_heads: int = 24
    attention_head_dim: int = 96
    in_channels: int = 4
    out_channels: int | None = 4
    num_layers: int = 32
    dropout: float = 0.0
    norm_num_groups: int = 32
    cross_attention_dim: int | None = 2304
    attention_bias: bool = True
    sample_size: list[int] = field(default_factory=lambda: [90, 160])
    sample_size_t: int = 8
    num_vector_embeds: int | None = None
    patch_size: int = 2
    patch_size_t: int = 1
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = None
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    attention_type: str = "default"
    caption_channels: int | None = 4096
    interpolation_scale_h: float | None = 1.5
    interpolation_scale_w: float | None = 2.0
    interpolation_scale_t: float | None = 1.0
    use_additional_conditions: bool | None = None
    attention_mode: str = "xformers"  # the release's kernel switch; we always use PyTorch SDPA
    downsampler: str | None = None
    use_rope: bool = True
    use_stable_fp32: bool = False

    def __post_init__(self):
        if isinstance(self.sample_size, int):
            self.sample_size = [self.sample_size, self.sample_size]
        self.sample_size = list(self.sample_size)
        checks = [
            (self.norm_type == "ada_norm_single", f"norm_type='ada_norm_single' (got {self.norm_type!r})"),
            (self.use_rope, "use_rope=True (the absolute-position variant is not implemented)"),
            (self.downsampler is None, f"downsampler=None (got {self.downsampler!r})"),
            (self.patch_size_t == 1, f"patch_size_t=1 (got {self.patch_size_t})"),
            (not self.only_cross_attention and not self.double_self_attention,
             "self-attention + text cross-attention blocks"),
            (self.activation_fn in ("gelu-approximate", "gelu"), f"activation_fn 'gelu-approximate' "
                                                                 f"(got {self.activation_fn!r})"),
            (self.attention_head_dim % 6 == 0, f"attention_head_dim divisible by 6 for 3D RoPE "
                                               f"(got {self.attention_head_dim})"),
            (self.caption_channels is not None and self.cross_attention_dim is not None,
             "caption_channels and cross_attention_dim"),
        ]
        for ok, need in checks:
            if not ok:
                raise ValueError(f"OpenSoraT2V supports {need}")

    @property
    def interpolation_scales(self) -> tuple[float, float, float]:
        """(t, h, w) RoPE position divisors: the config's, else the release's defaults from sample_size."""
        t = self.sample_size_t
        default_t = ((t - 1) // 16 + 1) if t % 2 == 1 else t / 16
        return (self.interpolation_scale_t if self.interpolation_scale_t is not None else default_t,
                self.interpolation_scale_h if self.interpolation_scale_h is not None else self.sample_size[0] / 30,
                self.interpolation_scale_w if self.interpolation_scale_w is not None else self.sample_size[1] / 40)


def full_attention(attn: Attention, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int,
                   sp_group=None) -> torch.Tensor:
    """Self-attention over all tokens with 3D RoPE; (B, N_local, C) -> (B, N_local, C).

    Ulysses: q / k / v go from sequence-sharded (B, N/sp, heads, d) to head-sharded (B, N, heads/sp, d)
    (padding tokens dropped, so they are never attended to), and the output back.
    """
    b, n_local, _ = x.shape
    q, k, v = (t.view(b, n_local, attn.heads, attn.head_dim) for t in attn.project_qkv(x))
    q, k, v = (comm.all_to_all(t, sp_group, scatter_dim=2, gather_dim=1, gather_size=num_tokens) for t in (q, k, v))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads_local, N, d)
    q, k = apply_rope_halves(q, *rotary, parts=3), apply_rope_halves(k, *rotary, parts=3)
    out = sdpa(q, k, v).transpose(1, 2)  # (B, N, heads_local, d)
    out = comm.all_to_all(out, sp_group, scatter_dim=1, gather_dim=2)  # (B, N_local, heads, d)
    return attn.to_out[0](out.reshape(b, n_local, -1))


class OpenSoraPlanBlock(nn.Module):
    """adaLN-single block: full 3D self-attention (RoPE), text cross-attention (unmodulated input), MLP.

    Keys as the release's BasicTransformerBlock: norm1 / attn1 / norm2 / attn2 / ff / scale_shift_table
    (the norms have no weights, norm_elementwise_affine=False). compile=True (models/modules/compile.py)
    compiles `residual_stream` whole when no module hook is active, else the branch methods (`compiled_methods`)
    with the cache hooks eager around them.
    """

    compiled_block = "residual_stream"
    compiled_methods = ("attn_branch", "cross_branch", "mlp_branch")

    def __init__(self, cfg: OpenSoraT2VConfig, index: int):
        super().__init__()
        self.index = index
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        norm = dict(eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.norm1 = nn.LayerNorm(dim, **norm)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias)
        self.norm2 = nn.LayerNorm(dim, **norm)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias,
                               cross_attention_dim=cfg.cross_attention_dim)
        approximate = "tanh" if cfg.activation_fn == "gelu-approximate" else "none"
        self.ff = FeedForward(dim, approximate=approximate)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 6C) -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each (B, 1, C)."""
        return modulation(self.scale_shift_table, t_mod, token_dims=1)

    def modulated_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """norm1(x) * (1 + scale_msa) + shift_msa: the self-attention input (and TeaCache's indicator)."""
        return modulate(self.norm1(x), mod[0], mod[1])

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int, hooks: ModuleHooks | None = None,
                sp_group=None) -> torch.Tensor:
        kv = self.attn2.context_kv(context)  # once per text (text_memo.py), eagerly, outside any compiled region
        return self.residual_stream(x, t_mod, kv, context_mask, rotary, num_tokens, sp_group, hooks=hooks)

    def residual_stream(self, x: torch.Tensor, t_mod: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                        context_mask: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int,
                        sp_group=None, hooks: ModuleHooks | None = None) -> torch.Tensor:
        """The block on the text's keys and values (`compiled_block`: compiled whole when hooks is None)."""
        mod = self.modulation(t_mod)
        # cache hook points: PAB broadcasts the attention output before its gate, as the PAB authors' v1.2 code
        # (this step's gate multiplies it); an attention a cache reuses skips its compute and, under Ulysses,
        # its all-to-alls
        attn = module_call(hooks, "full", self.index, lambda: self.attn_branch(x, mod, rotary, num_tokens, sp_group))
        x = x + mod[2] * attn
        # as PixArt-alpha / the release: cross-attention reads x itself (no norm, no modulation)
        x = x + module_call(hooks, "cross", self.index, lambda: self.cross_branch(x, kv, context_mask), block="full")
        mlp = module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x, mod), block="full")
        return x + mod[5] * mlp

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], rotary, num_tokens: int,
                    sp_group=None) -> torch.Tensor:
        return full_attention(self.attn1, self.modulated_input(x, mod), rotary, num_tokens, sp_group)

    def cross_branch(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                     context_mask: torch.Tensor | None) -> torch.Tensor:
        return self.attn2(x, mask=context_mask, kv=kv)

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.ff(modulate(self.norm2(x), mod[3], mod[4]))


@constant_table
def osp_rope_table(part: int, frames: int, height: int, width: int, scales: tuple[float, float, float], device: str,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    positions = [torch.arange(n, dtype=torch.float32, device=device) / s
                 for n, s in zip((frames, height, width), scales)]
    return rope_3d_halves(part, *positions, dtype=dtype)


class OpenSoraT2V(PretrainedModel, TextMemoMixin, CacheMixin):
    config_class = OpenSoraT2VConfig
    class_name = "OpenSoraT2V"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)

    def __init__(self, config: OpenSoraT2VConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        self.out_channels = config.out_channels or config.in_channels
        p = config.patch_size
        self.pos_embed = nn.Module()  # keeps the release's key `pos_embed.proj` (no position table with RoPE)
        self.pos_embed.proj = nn.Conv2d(config.in_channels, dim, kernel_size=p, stride=p)
        self.transformer_blocks = nn.ModuleList(OpenSoraPlanBlock(config, i) for i in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_size_t * p * p * self.out_channels)
        self.adaln_single = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self.parallel = ParallelState()
        self.text_memo = TextMemo()

    def set_parallel(self, state: ParallelState) -> None:
        if state.sp_size > 1 and self.config.num_attention_heads % state.sp_size:
            raise ValueError(f"Ulysses sequence parallelism needs num_attention_heads "
                             f"({self.config.num_attention_heads}) divisible by the sp size ({state.sp_size})")
        self.parallel = state

    def rotary(self, frames: int, height: int, width: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, head_dim) cos / sin for a (frames, height, width) token grid; fixed per size, so built once
        (constant_table).

        In `dtype`, the queries' (the model's): the release's RoPE3D rounds its fp32 angles to the
        queries' dtype and takes cos / sin there, so a bf16 model's tables carry bf16 angles."""
        return osp_rope_table(self.config.attention_head_dim // 3, frames, height, width,
                              tuple(float(s) for s in self.config.interpolation_scales), str(device), dtype)

    def run_blocks(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor,
                   context_mask: torch.Tensor | None, rotary, num_tokens: int, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Blocks start .. stop-1 on (B, N_local, C) tokens."""
        hooks = self.module_hooks()
        for block in self.transformer_blocks[start:stop]:
            x = block(x, t_mod, context, context_mask, rotary, num_tokens, hooks=hooks,
                      sp_group=self.parallel.sp_group)
        return x

    def cache_indicator(self, x: torch.Tensor, t_mod: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """TeaCache's indicator: the first block's modulated input, this rank's real tokens only."""
        start, stop = comm.shard_range(num_tokens, self.parallel.sp_size, self.parallel.sp_rank)
        first = self.transformer_blocks[0]
        return first.modulated_input(x[:, : stop - start], first.modulation(t_mod))

    @staticmethod
    def text_mask(encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, S) or the release's (B, 1, S) 0/1 mask -> (B, S) bool (True = attend), None if nothing is masked.

        The release adds (1 - mask) * -10000 to the scores; a boolean SDPA mask drops the same keys
        exactly (exp(-10000) is 0 in every float format). A prompt always keeps its end token.
        """
        if encoder_attention_mask is None:
            return None
        mask = encoder_attention_mask
        if mask.ndim == 3:
            if mask.shape[1] != 1:
                raise ValueError(f"encoder_attention_mask (B, 1, S) expected, got {tuple(mask.shape)}")
            mask = mask[:, 0]
        return mask.bool()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, T, H, W) latents, (B,) or () timesteps, (B, S, C_text) or (B, 1, S, C_text) mT5 states,
        (B, S) / (B, 1, S) text mask (1 = keep) -> (B, C_out, T, H, W)."""
        b, c, frames, height, width = hidden_states.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent height / width ({height}, {width}) must be divisible by patch_size {p}")
        h, w = height // p, width // p
        num_tokens = frames * h * w
        if encoder_hidden_states.ndim == 4:  # the release's (B, 1, S, C): one caption per video
            encoder_hidden_states = encoder_hidden_states[:, 0]
        x = self.pos_embed.proj(hidden_states.permute(0, 2, 1, 3, 4).reshape(b * frames, c, height, width))
        x = x.flatten(2).transpose(1, 2).reshape(b, num_tokens, -1)  # (B, T*h*w, C) in (t, y, x) order
        sp_group = self.parallel.sp_group
        x = comm.split(x, 1, sp_group)  # (B, N_local, C)
        t_mod, t_emb = self.adaln_single(timestep.expand(b), x.dtype)
        context = self.text_memo(encoder_hidden_states, self.caption_projection)  # (B, S, C): once per generation
        context_mask = self.text_mask(encoder_attention_mask)
        rotary = self.rotary(frames, h, w, x.device, x.dtype)
        blocks = partial(self.run_blocks, t_mod=t_mod, context=context, context_mask=context_mask, rotary=rotary,
                         num_tokens=num_tokens)

        # the block-stack hook point: a cache may skip, cut short or reuse the stack
        x = self.cache_stack(blocks, x, indicator=lambda: self.cache_indicator(x, t_mod, num_tokens),
                             num_units=self.config.num_layers)

        shift, scale = modulation(self.scale_shift_table, t_emb, token_dims=1)  # (B, 1, C) each
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, N_local, p*p*C_out)
        x = comm.gather(x, 1, sp_group, size=num_tokens)  # (B, N, p*p*C_out)
        x = x.view(b, frames, h, w, p, p, self.out_channels).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(b, self.out_channels, frames, height, width)
