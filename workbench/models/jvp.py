"""dF/dt of the velocity field for continuous-time consistency distillation (Eq. 8 / Eq. 14).

    dF/dt = grad_x F(x_t, t) . dx/dt + d_t F(x_t, t) = jvp(F, (x_t, t), (dx/dt, 1))

Modes (all stop-gradient: results are detached and nothing reaches the net's parameters):
  whole              forward-mode AD (`torch.func.jvp`) over the whole FlowNet, under no_grad.
  blockwise          Algorithm 2 on the diffusers `WanTransformer3DModel` internals, the patch embedding, every block
                     and the output layer hand-written (`wan_block_jvp`: primal and tangent stacked as plain tensors),
                     forward mode for the time embedding and FlowNet's glue.
  reverse            `torch.autograd.functional.jvp` (double-backward trick), the route the paper names.
  reverse_blockwise  Algorithm 2 with that reverse-mode jvp: here the block-wise memory saving applies.
  finite_difference  central difference (F(x + eps v, t + eps) - F(x - eps v, t - eps)) / (2 eps).
Attention for the AD modes: "math" (PyTorch's math SDPA; the default CPU kernel has no forward AD) or
"chunked" (`attention_jvp`: output and tangent in one flash-style pass over key chunks, O(N) memory); in the
hand-written block JVP of "blockwise" they are the two `ATTEND` functions. Around the blocks, the AD modes run
hand-written tangent rules for linear, layer and RMS norm (`_TangentRules`), where PyTorch's are slow.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager, nullcontext

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn import functional as nnf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from workbench.models.wan import Conditioning, FlowNet
from workbench.models.wan_block_jvp import block_jvp, output_jvp, patch_embedding_jvp, rotary_phases, unpatchify

TANGENT_MODES = ("whole", "blockwise", "reverse", "reverse_blockwise", "finite_difference")  # distill.jvp
ATTENTIONS = ("math", "chunked")
# Both return (outputs, output tangents) for (fn, primals, tangents).
_JVP = {"forward": torch.func.jvp, "reverse": torch.autograd.functional.jvp}


def velocity_and_tangent(net: FlowNet, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor, cond: Conditioning,
                         dxdt_BCTHW: torch.Tensor, *, mode: str = "blockwise", attention: str = "math",
                         chunk: int = 1024, fd_eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """F(x_t, t) and dF/dt = grad_x F . dx/dt + d_t F (Eq. 8, 14), tangents (dx/dt, 1) on (x_t, t).

    No grad to the net (stop-gradient): both results are detached, parameters get no .grad.
    `fd_eps` is the step of mode "finite_difference"; `chunk` the key chunk of attention "chunked".
    """
    if mode not in TANGENT_MODES:
        raise ValueError(f"mode must be one of {TANGENT_MODES}, got {mode!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention == "chunked" and mode.startswith("reverse"):
        raise ValueError("attention='chunked' has a forward-mode JVP only; use it with 'whole' or 'blockwise'")
    if not t_B.is_floating_point():  # a float t, so that a tangent flows through the time embedding
        t_B = t_B.to(x_t_BCTHW.dtype)
    one_B = torch.ones_like(t_B)   # the tangent on t (Eq. 14: (dx/dt, 1))
    with torch.no_grad(), (nullcontext() if mode == "finite_difference" else attention_for_jvp(attention, chunk)):
        if mode == "finite_difference":
            f = net(x_t_BCTHW, t_B, cond)
            dfdt = (net(x_t_BCTHW + fd_eps * dxdt_BCTHW, t_B + fd_eps, cond)
                    - net(x_t_BCTHW - fd_eps * dxdt_BCTHW, t_B - fd_eps, cond)) / (2 * fd_eps)
        elif mode in ("whole", "reverse"):
            jvp = _JVP["forward" if mode == "whole" else "reverse"]
            f, dfdt = jvp(lambda x, t: net(x, t, cond), (x_t_BCTHW, t_B), (dxdt_BCTHW, one_B))
        elif mode == "blockwise":   # in the weights' dtype: autocast does not reach the hand-written out= kernels
            attend = functools.partial(ATTEND[attention], chunk=chunk)
            with torch.autocast(x_t_BCTHW.device.type, enabled=False):
                f, dfdt = _blockwise(net, x_t_BCTHW, t_B, cond, dxdt_BCTHW, one_B, _JVP["forward"], attend)
        else:
            f, dfdt = _blockwise(net, x_t_BCTHW, t_B, cond, dxdt_BCTHW, one_B, _JVP["reverse"])
    return f.detach(), dfdt.detach()


def _blockwise(net: FlowNet, x_BCTHW, t_B, cond: Conditioning, v_BCTHW, v_B, jvp, attend=None):
    """Algorithm 2 on Wan's forward, with FlowNet's I2V glue (channels, text padding, timestep = 1000 t; a VP
    network's x_vp and timestep, both functions of t: their tangents come from (dx/dt, 1) too). With `attend`, the
    patch embedding, blocks and output layer are `wan_block_jvp`'s hand-written JVPs; else `jvp` over diffusers'."""
    wan = net.transformer
    grid_THW = x_BCTHW.shape[2:]
    _, text_BLD, image_BND = net.wan_inputs(x_BCTHW, cond)  # FlowNet's I2V glue; the context has no tangent

    def i2v(x_BCTHW, t_B):  # cat([x_t or x_vp, mask, first]): the tangent is on the first channels only
        return net.wan_inputs(net.net_input(x_BCTHW, t_B), cond)[0]

    def time_embedding(t_B):  # T, with the text / image context (which has no tangent) along
        temb, proj, text, image = wan.condition_embedder(net.net_timestep(t_B), text_BLD, image_BND)
        context = text if image is None else torch.cat([image, text], dim=1)
        return temb, proj.unflatten(1, (6, -1)), context

    def patch_embedding(x_BCTHW, t_B):  # P
        return wan.patch_embedding(i2v(x_BCTHW, t_B)).flatten(2).transpose(1, 2).contiguous()

    def output_layer(h, temb):  # O: norm_out, scale_shift_table, proj_out, unpatchify
        shift, scale = (wan.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        h = (wan.norm_out(h.float()) * (1 + scale) + shift).type_as(h)
        return unpatchify(wan.proj_out(h), wan.config.patch_size, grid_THW).to(x_BCTHW.dtype)

    rotary_emb = wan.rope(x_BCTHW)                                                       # reads the grid; no tangent
    (temb, proj, context), (v_temb, v_proj, _) = jvp(time_embedding, (t_B,), (v_B,))    # line 4
    if attend is not None:  # hand-written, h and g stacked: h2 = [h, g]; no graph to cut under no_grad (sg)
        h2 = patch_embedding_jvp(wan.patch_embedding, torch.stack(jvp(i2v, (x_BCTHW, t_B), (v_BCTHW, v_B))))  # 6-7
        phases = rotary_phases(rotary_emb, h2.dtype)
        for block in wan.blocks:                                                         # line 8
            h2 = block_jvp(block, h2, proj, v_proj, context, phases, attend)             # line 10
        out2 = output_jvp(wan, h2, temb, v_temb, grid_THW)                               # line 14
        return jvp(net.velocity, (out2[0], x_BCTHW, t_B), (out2[1], v_BCTHW, v_B))       # line 15 (+ x0 -> F)
    h, g = jvp(patch_embedding, (x_BCTHW, t_B), (v_BCTHW, v_B))                         # lines 6-7
    for block in wan.blocks:                                                             # line 8
        h, g = jvp(lambda h, p, block=block: block(h, context, p, rotary_emb), (h, proj), (g, v_proj))  # line 10
        h, g = h.detach(), g.detach()                                                    # lines 11-12: sg
    return jvp(lambda h, temb, x, t: net.velocity(output_layer(h, temb), x, t),         # lines 14-15
               (h, temb, x_BCTHW, t_B), (g, v_temb, v_BCTHW, v_B))                       # (+ x0 -> F, if so)


@contextmanager
def attention_for_jvp(attention: str = "math", chunk: int = 1024):
    """Scaled dot-product attention with a forward-mode derivative, and fast tangent rules, inside this context only.

    "math" forces PyTorch's math SDPA backend. "chunked" routes every `scaled_dot_product_attention` call
    (diffusers' native Wan attention makes them: self, text and image cross-attention) to `chunked_attention`.
    Both go through a thread-local `TorchFunctionMode` (`_TangentRules`): no module, processor or global is
    changed, and leaving the context removes it.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    with sdpa_kernel(SDPBackend.MATH) if attention == "math" else nullcontext(), \
            _TangentRules(chunk if attention == "chunked" else None):
        yield


class _TangentRules(TorchFunctionMode):
    """Hand-written forward-mode rules where the generic ones are slow (`_RULES`: linear, layer and RMS norm, exact
    to rounding), applied where only the input carries a tangent; SDPA's (`chunked_attention`) when `chunk` is set."""

    def __init__(self, chunk: int | None):
        super().__init__()
        self.chunk = chunk

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RULES:
            return _RULES[func](*args, **kwargs)
        if func is nnf.scaled_dot_product_attention and self.chunk is not None:
            return chunked_attention(*args, **kwargs, chunk=self.chunk)
        return func(*args, **kwargs)


def _input_tangent(input, *params):
    """(x, dx) where only `input` carries a tangent (the parameters none), else None: the rules below apply."""
    x, dx = fwAD.unpack_dual(input)
    if dx is None or any(fwAD.unpack_dual(p).tangent is not None for p in params if p is not None):
        return None
    return x, dx


def _linear(input, weight, bias=None):
    """(x W^T + b, dx W^T). The generic rule of addmm also multiplies and adds the zero tangents of W and b
    (measured 4.5x a forward on the toy, this 2x)."""
    if (xd := _input_tangent(input, weight, bias)) is None:
        return nnf.linear(input, weight, bias)
    x, dx = xd
    return fwAD.make_dual(nnf.linear(x, weight, bias), nnf.linear(dx, weight))


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """y = x_hat w + b, x_hat = (x - mean) r; dy = w r (dx - mean(dx) - x_hat mean(dx x_hat)), r = 1 / std."""
    if len(normalized_shape) != 1 or (xd := _input_tangent(input, weight, bias)) is None:
        return nnf.layer_norm(input, normalized_shape, weight, bias, eps)
    x, dx = xd
    y, mean, r = torch.native_layer_norm(x, normalized_shape, weight, bias, eps)  # the kernel layer_norm runs
    x_hat = y if weight is None and bias is None else (x - mean) * r
    dx_mean_xhat = torch.linalg.vecdot(dx, x_hat).unsqueeze(-1) / x.shape[-1]
    dy = (dx - dx.mean(-1, keepdim=True)).addcmul_(x_hat, dx_mean_xhat, value=-1)
    dy = dy.mul_(r) if weight is None else dy.mul_(r).mul_(weight)
    return fwAD.make_dual(y, dy)


def _rms_norm(input, normalized_shape, weight=None, eps=None):
    """y = x r w, r = 1 / rms(x); dy = w r (dx - x r^2 mean(x dx))."""
    if len(normalized_shape) != 1 or (xd := _input_tangent(input, weight)) is None:
        return nnf.rms_norm(input, normalized_shape, weight, eps)
    x, dx = xd
    n, eps = x.shape[-1], torch.finfo(x.dtype).eps if eps is None else eps
    r = torch.rsqrt(torch.linalg.vecdot(x, x).unsqueeze(-1) / n + eps)
    dy = dx.addcmul(x, r * r * torch.linalg.vecdot(x, dx).unsqueeze(-1), value=-1 / n).mul_(r)
    return fwAD.make_dual(nnf.rms_norm(x, normalized_shape, weight, eps), dy if weight is None else dy.mul_(weight))


_RULES = {nnf.linear: _linear, nnf.layer_norm: _layer_norm, nnf.rms_norm: _rms_norm}


def chunked_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False, *, chunk: int = 1024):
    """`scaled_dot_product_attention` on (B, heads, N, D); under forward-mode AD (`torch.func.jvp`,
    `torch.autograd.forward_ad`) the output and its tangent come from one blocked pass (`attention_jvp`),
    O(N x chunk) extra memory, never N x N. Without a tangent it is plain SDPA.
    """
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:  # Wan passes none of these
        raise ValueError("chunked_attention supports plain attention only (no mask, dropout, causal, gqa)")
    (q, dq), (k, dk), (v, dv) = (fwAD.unpack_dual(x) for x in (query, key, value))
    if dq is None and dk is None and dv is None:
        return nnf.scaled_dot_product_attention(query, key, value, scale=scale)
    dq = torch.zeros_like(q) if dq is None else dq
    heads = lambda x: None if x is None else x.reshape(-1, *x.shape[-2:])  # noqa: E731  (B * heads, N, D)
    out2 = attention_jvp(*map(heads, (q, k, v, dq, dk, dv)), scale=scale, chunk=chunk)
    return fwAD.make_dual(*out2.view(2, *q.shape))


def _math_attend(qq, kk, vv, *, chunk=None):
    """The math-SDPA JVP (torch.func.jvp) on `attention_jvp_packed`'s operands: the reference of "blockwise"."""
    D = qq.shape[-1]
    k, dk = (kk[:, :, 1], kk[:, :, 0]) if kk.shape[2] == 2 else (kk[:, :, 0], torch.zeros_like(kk[:, :, 0]))
    v, dv = vv[..., -D - 1:-1], vv[..., :D] if vv.shape[-1] == 2 * D + 1 else torch.zeros_like(vv[..., :D])
    with sdpa_kernel(SDPBackend.MATH):
        return torch.stack(torch.func.jvp(lambda q, k, v: nnf.scaled_dot_product_attention(q, k, v, scale=1.0),
                                          (qq[:, :, 0], k, v), (qq[:, :, 1], dk, dv)))


_TILE = 1 << 22  # elements of a (B * heads, query rows, key chunk) tile; more query rows join while it fits


def attention_jvp(q, k, v, dq, dk=None, dv=None, *, scale: float | None = None, chunk: int = 1024):
    """softmax(s Q K^T) V and its JVP on (BH, N, D) inputs and tangents (dK, dV None: none on the keys / values,
    as for cross-attention's context): stacked (2, BH, N, D), by `attention_jvp_packed`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    ones = v.new_ones(v.shape[:-1] + (1,))
    return attention_jvp_packed(torch.stack([q * scale, dq * scale], 2),
                                k.unsqueeze(2) if dk is None else torch.stack([dk, k], 2),
                                torch.cat([v, ones] if dv is None else [dv, v, ones], -1), chunk=chunk)


def attention_jvp_packed(qq, kk, vv, *, chunk: int = 1024):
    """O = softmax(S) V, S = s Q K^T, and its JVP, stacked (2, BH, N, D), flash-style in one pass over key chunks:

        dS = s (dQ K^T + Q dK^T),   dO_i = sum_j p_ij (dS_ij V_j + dV_j) / l_i - mu_i O_i,
        mu_i = sum_j p_ij dS_ij / l_i,
    with p_ij = exp(S_ij - m_i), l_i = sum_j p_ij and the online softmax's reference m_i (running max, rescaling
    the accumulators). Operands packed so that each product is one matmul of views, no copies:
    qq (BH, N, 2, D) = [sQ, s dQ]; kk (BH, L, 2, D) = [dK, K] (dS = qq kk^T), or (BH, L, 1, D) = [K] without dK;
    vv (BH, L, 2D + 1) = [dV, V, 1] (p vv: p dV, p V and l in one product; (p dS) [V, 1]: (p dS) V and mu l),
    or (BH, L, D + 1) = [V, 1] without dV. Query chunks are batched together while a tile holds under _TILE elements.
    """
    BH, N, _, D = qq.shape
    qs, k = qq[:, :, 0], kk[:, :, -1]
    a, b = (qq.flatten(2), kk.flatten(2)) if kk.shape[2] == 2 else (qq[:, :, 1], k)   # dS = a b^T
    # |S_ij| <= |s q_i| max_j |k_j| (Cauchy-Schwarz): where that bound is under tau, exp(S) can neither overflow
    # nor underflow (e^tau = max^(1/3) leaves room for the sums), so m_i = 0 serves the whole row and the online
    # softmax never rescales; elsewhere m_i is the running max.
    tau = math.log(torch.finfo(qq.dtype).max) / 3
    bound = qs.norm(dim=-1) * k.norm(dim=-1).amax(-1, keepdim=True)   # (BH, N)
    c = min(chunk, k.shape[1])
    rows = max(chunk, _TILE // (BH * c))
    out2 = qq.new_empty(2, BH, N, D)
    for i in range(0, N, rows):
        fixed = bool((bound[:, i:i + rows] <= tau).all())
        _query_rows(qs[:, i:i + rows], a[:, i:i + rows], k, b, vv, c, fixed, out2[:, :, i:i + rows])
    return out2


def _query_rows(qs, a, k, b, vv, chunk: int, fixed: bool, out2):
    """One block of query rows (BH, n, D) against all keys, chunk by chunk: (O, dO) into out2 (2, BH, n, D)."""
    BH, n, D = qs.shape
    m = qs.new_full((BH, n, 1), 0.0 if fixed else -math.inf)   # reference of exp (the running max unless fixed)
    acc = qs.new_empty(BH, n, vv.shape[-1])                    # sum_j p_ij [(dV_j,) V_j, 1]
    acc_t = qs.new_empty(BH, n, D + 1)                         # sum_j p_ij dS_ij [V_j, 1]
    s_buf, ds_buf = qs.new_empty(BH * n * chunk), qs.new_empty(BH * n * chunk)  # reused: no allocation per chunk
    for j in range(0, k.shape[1], chunk):
        c = min(chunk, k.shape[1] - j)
        s = torch.bmm(qs, k[:, j:j + c].mT, out=s_buf[:BH * n * c].view(BH, n, c))
        if not fixed:                                           # online softmax: new max, rescale what was summed
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            if j:
                alpha = torch.exp(m - m_new)
                acc.mul_(alpha)
                acc_t.mul_(alpha)
            m = m_new
            s.sub_(m)
        p = s.exp_()
        p_ds = torch.bmm(a, b[:, j:j + c].mT, out=ds_buf[:BH * n * c].view(BH, n, c)).mul_(p)
        acc.baddbmm_(p, vv[:, j:j + c], beta=1 if j else 0)    # beta 0: the empty accumulators are not read
        acc_t.baddbmm_(p_ds, vv[:, j:j + c, -D - 1:], beta=1 if j else 0)
    l, mu_l = acc[..., -1:], acc_t[..., -1:]
    o = torch.div(acc[..., -D - 1:-1], l, out=out2[0])
    d_o = acc_t[..., :D].sub_(mu_l * o)                         # sum p dS V - mu l O (+ sum p dV)
    if vv.shape[-1] > D + 1:
        d_o.add_(acc[..., :D])
    torch.div(d_o, l, out=out2[1])


ATTEND = {"math": _math_attend, "chunked": attention_jvp_packed}  # block_jvp's attention, per `attention`
