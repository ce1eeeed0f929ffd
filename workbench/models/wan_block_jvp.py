"""Hand-written JVPs of diffusers' Wan in Algorithm 2, with no dual numbers: the patch embedding (lines 6-7), each
`WanTransformerBlock` (line 10) and the output layer (line 14).

Primal and tangent travel stacked on a leading axis of 2, x2 = [x, dx] (2, B, N, D): a linear map without its bias
is its own tangent map, so each projection is one matmul pair over both halves (the bias on the primal only), and
the rotary embedding (linear in q, k) is the same complex product on both. Norms, modulation and GELU use explicit
derivatives (the layer-norm and GELU ones through the kernels of their backward: a layer norm's Jacobian without
affine weights is symmetric, an element-wise map's is diagonal, so their VJP is their JVP); attention through
`attend` (`jvp.ATTEND`), on operands packed as `attention_jvp_packed` takes them, straight from the projections.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.activations import GELU
from diffusers.models.transformers.transformer_wan import WanAttention, WanTransformerBlock

Attend = Callable[..., torch.Tensor]  # `attention_jvp_packed`'s (qq, kk, vv) -> (2, BH, N, d)


def rotary_phases(rotary_emb: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """diffusers' (cos, sin) (1, N, 1, d) as complex e^(i theta) (1, N, 1, d / 2): `apply_rotary_emb`'s
    out[2i] = x[2i] cos - x[2i+1] sin, out[2i+1] = x[2i] sin + x[2i+1] cos is (x[2i] + i x[2i+1]) e^(i theta).
    In `dtype`, at least float32 (as diffusers, which rotates in float64, rotates half-precision q, k in float)."""
    cos, sin = rotary_emb
    real = torch.promote_types(dtype, torch.float32)
    return torch.complex(cos[..., 0::2].to(real), sin[..., 1::2].to(real))


def patch_embedding_jvp(conv: torch.nn.Conv3d, x2_BCTHW):
    """[P(x), W * dx] (2, B, N, D) for x2 = [x, dx] (2, B, C, T, H, W): the patchifying conv is linear, so one
    conv without its bias over both halves, the bias added to the primal (Algorithm 2 lines 6-7)."""
    two, B = x2_BCTHW.shape[:2]
    y = torch.nn.functional.conv3d(x2_BCTHW.flatten(0, 1), conv.weight, None, conv.stride, conv.padding,
                                   conv.dilation, conv.groups)
    h2 = y.flatten(2).transpose(1, 2).unflatten(0, (two, B)).contiguous()
    h2[0] += conv.bias
    return h2


def output_jvp(wan, h2, temb_BD, dtemb_BD, grid_THW: tuple[int, int, int]):
    """O (norm_out, scale_shift_table, proj_out, unpatchify) on h2 = [h, dh] with temb's tangent: (2, B, C, T, H, W)
    (Algorithm 2 line 14)."""
    shift, scale = (wan.scale_shift_table + temb_BD.unsqueeze(1)).chunk(2, dim=1)      # (B, 1, D) each
    dmod = dtemb_BD.unsqueeze(1)                                                         # d shift = d scale = d temb
    y2 = _linear(_modulate(h2, scale, shift, dmod, dmod, wan.norm_out.eps), wan.proj_out)
    return unpatchify(y2.flatten(0, 1), wan.config.patch_size, grid_THW).unflatten(0, (2, -1))


def unpatchify(h_BND, patch_size, grid_THW: tuple[int, int, int]):
    """Wan's tokens (B, N, C p_t p_h p_w) back to (B, C, T, H, W)."""
    (p_t, p_h, p_w), (T, H, W) = patch_size, grid_THW
    h = h_BND.reshape(h_BND.shape[0], T // p_t, H // p_h, W // p_w, p_t, p_h, p_w, -1)
    return h.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def block_jvp(block: WanTransformerBlock, h2, proj_B6D, dproj_B6D, context_BLD, phases, attend: Attend):
    """[block(h, context, proj, rotary), its JVP along (dh, dproj)] for h2 = [h, dh] (2, B, N, D); the context
    carries no tangent; `phases` from `rotary_phases`. Each step is `WanTransformerBlock.forward`'s, its tangent
    beside it."""
    mod = (block.scale_shift_table + proj_B6D.float()).unsqueeze(2)     # (B, 6, 1, D): shift, scale, gate, c_...
    dmod = dproj_B6D.float().unsqueeze(2)

    # 1. self-attention: x = LN(h) (1 + scale) + shift, h += attn1(x) gate
    x2 = _modulate(h2, mod[:, 1], mod[:, 0], dmod[:, 1], dmod[:, 0], block.norm1.eps)
    a2 = _self_attention(block.attn1, x2, phases, attend)
    h2 = _gated_residual(h2, a2, mod[:, 2], dmod[:, 2])

    # 2. cross-attention: h += attn2(norm2(h), context)
    if isinstance(block.norm2, torch.nn.LayerNorm):
        y, dy = _layer_norm(h2.float(), block.norm2.eps)
        x2 = torch.stack([y * block.norm2.weight + block.norm2.bias, dy * block.norm2.weight]).type_as(h2)
    else:  # nn.Identity
        x2 = h2
    h2 = h2 + _cross_attention(block.attn2, x2, context_BLD, attend)

    # 3. feed-forward: x = LN(h) (1 + c_scale) + c_shift, h += ffn(x) c_gate; ffn = proj_out(gelu(proj_in(x)))
    x2 = _modulate(h2, mod[:, 4], mod[:, 3], dmod[:, 4], dmod[:, 3], block.norm3.eps)
    act, proj_out = block.ffn.net[0], block.ffn.net[2]
    if not isinstance(act, GELU):
        raise TypeError(f"block_jvp knows the GELU feed-forward of Wan, got {type(act).__name__}")
    f2 = _linear(x2, act.proj)                                          # [u, du], in place into [gelu(u), gelu'(u) du]
    torch.ops.aten.gelu_backward.grad_input(f2[1], f2[0], approximate=act.approximate, grad_input=f2[1])
    torch.ops.aten.gelu_(f2[0], approximate=act.approximate)
    return _gated_residual(h2, _linear(f2, proj_out), mod[:, 5], dmod[:, 5])


def _linear(x2, lin: torch.nn.Linear):
    """[x W^T + b, dx W^T]: the bias only on the primal."""
    W = lin.weight
    x_2MD = x2.flatten(1, -2)
    out = x_2MD.new_empty(x_2MD.shape[:-1] + (W.shape[0],))
    if lin.bias is None:
        torch.mm(x_2MD[0], W.T, out=out[0])
    else:
        torch.addmm(lin.bias, x_2MD[0], W.T, out=out[0])
    torch.mm(x_2MD[1], W.T, out=out[1])
    return out.view(x2.shape[:-1] + (W.shape[0],))


def _layer_norm(h2, eps: float):
    """(LN(h), J dh), no affine: J = r (I - 1/n - x_hat x_hat^T / n), symmetric, so J dh is LN's backward of dh."""
    h, dh = h2[0], h2[1]
    y, mean, rstd = torch.native_layer_norm(h, h.shape[-1:], None, None, eps)
    return y, torch.ops.aten.native_layer_norm_backward(dh, h, h.shape[-1:], mean, rstd, None, None,
                                                        [True, False, False])[0]


def _modulate(h2, scale, shift, dscale, dshift, eps: float):
    """[y (1 + scale) + shift, dy (1 + scale) + y dscale + dshift], y = LN(h) (in float, as diffusers)."""
    y, dy = _layer_norm(h2.float(), eps)
    out = torch.empty_like(h2)
    torch.addcmul(shift, y, 1 + scale, out=out[0])
    torch.addcmul(dshift, y, dscale, out=out[1]).addcmul_(dy, 1 + scale)
    return out


def _gated_residual(h2, a2, gate, dgate):
    """[h + a gate, dh + da gate + a dgate] (in float, as diffusers)."""
    out = torch.addcmul(h2.float(), a2.float(), gate)
    out[1].addcmul_(a2[0], dgate)
    return out.type_as(h2)


def _rms_norm(x2, norm: torch.nn.RMSNorm, scale: float = 1.0):
    """scale [x r w, (dx - x r^2 mean(x dx)) r w], r = 1 / rms(x) (over all heads: Wan's rms_norm_across_heads)."""
    x, dx = x2[0], x2[1]
    n = x.shape[-1]
    eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps
    r = torch.rsqrt(torch.linalg.vecdot(x, x).unsqueeze(-1) / n + eps)
    out = torch.empty_like(x2)
    torch.mul(x, r, out=out[0])
    torch.addcmul(dx, x, r * r * torch.linalg.vecdot(x, dx).unsqueeze(-1), value=-1 / n, out=out[1]).mul_(r)
    w = norm.weight if scale == 1 else scale if norm.weight is None else norm.weight * scale
    return out if w is None else out.mul_(w)


def _pack(x2, heads: int, phases=None, swap: bool = False):
    """(2, B, N, heads * d) -> (B * heads, N, 2, d), `attention_jvp_packed`'s q / k layout ([x, dx], or [dx, x]
    where `swap`), with the rotary embedding applied on the way where `phases` are given (linear: on both halves)."""
    two, B, N, _ = x2.shape
    x_2BNhd = x2.view(two, B, N, heads, -1)
    if phases is not None:  # half precision rotates in float (`rotary_phases`)
        x_2BNhd = x_2BNhd.to(phases.real.dtype)
    out = x_2BNhd.new_empty(B, heads, N, two, x_2BNhd.shape[-1])
    if phases is None:
        dst, src = out.permute(3, 0, 2, 1, 4), x_2BNhd
    else:
        dst = torch.view_as_complex(out.unflatten(-1, (-1, 2))).permute(3, 0, 2, 1, 4)
        src = torch.view_as_complex(x_2BNhd.unflatten(-1, (-1, 2)))
    for i in range(two):
        if phases is None:
            dst[i ^ swap].copy_(src[i])
        else:
            torch.mul(src[i], phases, out=dst[i ^ swap])
    return out.flatten(0, 1).type_as(x2)


def _pack_values(v2, heads: int):
    """(2, B, N, heads * d) -> [dV, V, 1] (B * heads, N, 2 d + 1), `attention_jvp_packed`'s value layout."""
    _, B, N, _ = v2.shape
    v_2BNhd = v2.view(2, B, N, heads, -1)
    d = v_2BNhd.shape[-1]
    out = v2.new_empty(B, heads, N, 2 * d + 1)
    dst = out[..., :2 * d].unflatten(-1, (2, d)).permute(3, 0, 2, 1, 4)
    dst[0].copy_(v_2BNhd[1])
    dst[1].copy_(v_2BNhd[0])
    out[..., -1] = 1
    return out.flatten(0, 1)


def _context_keys(k_BLD, heads: int):
    """Context keys (no tangent) (B, L, heads * d) -> [K] (B * heads, L, 1, d)."""
    return k_BLD.unflatten(-1, (heads, 1, -1)).transpose(1, 2).flatten(0, 1)


def _context_values(v_BLD, heads: int):
    """Context values (no tangent) (B, L, heads * d) -> [V, 1] (B * heads, L, d + 1)."""
    v = v_BLD.unflatten(-1, (heads, -1)).transpose(1, 2)
    return torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1).flatten(0, 1)


def _merge_heads(o_2BhNd, B: int):
    """(2, B * heads, N, d) -> (2, B, N, heads * d)."""
    two, BH, N, d = o_2BhNd.shape
    return o_2BhNd.view(two, B, BH // B, N, d).transpose(2, 3).reshape(two, B, N, -1)


def _self_attention(attn: WanAttention, x2, phases, attend: Attend):
    """`WanAttnProcessor` without context: rms-normed q, k, rotary on both, attention, to_out; with tangents.
    The attention's scale 1 / sqrt(d) is folded into q's norm weight."""
    B, H = x2.shape[1], attn.heads
    scale = (H / attn.to_q.weight.shape[0]) ** 0.5
    qq = _pack(_rms_norm(_linear(x2, attn.to_q), attn.norm_q, scale), H, phases)
    kk = _pack(_rms_norm(_linear(x2, attn.to_k), attn.norm_k), H, phases, swap=True)
    o2 = attend(qq, kk, _pack_values(_linear(x2, attn.to_v), H))
    return _linear(_merge_heads(o2, B), attn.to_out[0])


def _cross_attention(attn: WanAttention, x2, context_BLD, attend: Attend):
    """`WanAttnProcessor` with context (no tangent): text, plus image tokens (the first L - 512) where the block
    has `add_k_proj`; the two attentions' outputs add before to_out."""
    B, H = x2.shape[1], attn.heads
    qq = _pack(_rms_norm(_linear(x2, attn.to_q), attn.norm_q, (H / attn.to_q.weight.shape[0]) ** 0.5), H)
    image_BLD = None
    if attn.add_k_proj is not None:
        n_image = context_BLD.shape[1] - 512                              # diffusers' hard-coded text length
        image_BLD, context_BLD = context_BLD[:, :n_image], context_BLD[:, n_image:]
    o2 = attend(qq, _context_keys(attn.norm_k(attn.to_k(context_BLD)), H), _context_values(attn.to_v(context_BLD), H))
    if image_BLD is not None:
        o2 = o2 + attend(qq, _context_keys(attn.norm_added_k(attn.add_k_proj(image_BLD)), H),
                         _context_values(attn.add_v_proj(image_BLD), H))
    return _linear(_merge_heads(o2, B), attn.to_out[0])
