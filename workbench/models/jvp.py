"""dF/dt of the velocity field for continuous-time consistency distillation (Eq. 8 / Eq. 14).

    dF/dt = grad_x F(x_t, t) . dx/dt + d_t F(x_t, t) = jvp(F, (x_t, t), (dx/dt, 1))

Modes (all stop-gradient: results are detached and nothing reaches the net's parameters):
  whole              forward-mode AD (`torch.func.jvp`) over the whole FlowNet, under no_grad.
  blockwise          Algorithm 2 on the diffusers `WanTransformer3DModel` internals, forward mode.
  reverse            `torch.autograd.functional.jvp` (double-backward trick), the route the paper names.
  reverse_blockwise  Algorithm 2 with that reverse-mode jvp: here the block-wise memory saving applies.
  finite_difference  central difference (F(x + eps v, t + eps) - F(x - eps v, t - eps)) / (2 eps).
Attention for the AD modes: "math" (PyTorch's math SDPA; the default CPU kernel has no forward AD) or
"chunked" (the default kernel forward, and a JVP computed flash-style in query x key chunks).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
from torch.nn import functional as nnf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from workbench.models.wan import Conditioning, FlowNet

TANGENT_MODES = ("whole", "blockwise", "reverse", "reverse_blockwise", "finite_difference")  # distill.jvp
ATTENTIONS = ("math", "chunked")
# Both return (outputs, output tangents) for (fn, primals, tangents).
_JVP = {"forward": torch.func.jvp, "reverse": torch.autograd.functional.jvp}


def velocity_and_tangent(net: FlowNet, x_t_BCTHW: torch.Tensor, t_B: torch.Tensor, cond: Conditioning,
                         dxdt_BCTHW: torch.Tensor, *, mode: str = "blockwise", attention: str = "math",
                         chunk: int = 1024, fd_eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """F(x_t, t) and dF/dt = grad_x F . dx/dt + d_t F (Eq. 8, 14), tangents (dx/dt, 1) on (x_t, t).

    No grad to the net (stop-gradient): both results are detached, parameters get no .grad.
    `fd_eps` is the step of mode "finite_difference"; `chunk` the query / key chunk of attention "chunked".
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
        else:
            jvp = _JVP["forward" if mode == "blockwise" else "reverse"]
            f, dfdt = _blockwise(net, x_t_BCTHW, t_B, cond, dxdt_BCTHW, one_B, jvp)
    return f.detach(), dfdt.detach()


def _blockwise(net: FlowNet, x_BCTHW, t_B, cond: Conditioning, v_BCTHW, v_B, jvp):
    """Algorithm 2 on Wan's forward, with FlowNet's I2V glue (channels, text padding, timestep = 1000 t)."""
    wan = net.transformer
    B, _, T, H, W = x_BCTHW.shape
    p_t, p_h, p_w = wan.config.patch_size
    _, text_BLD, image_BND = net.wan_inputs(x_BCTHW, cond)  # FlowNet's I2V glue; the context has no tangent

    def i2v(x_BCTHW):  # cat([x_t, mask, first]): the tangent is dx/dt on x_t's channels, 0 on the others
        return net.wan_inputs(x_BCTHW, cond)[0]

    def time_embedding(t_B):  # T, with the text / image context (which has no tangent) along
        temb, proj, text, image = wan.condition_embedder(net.wan_timestep(t_B), text_BLD, image_BND)
        context = text if image is None else torch.cat([image, text], dim=1)
        return temb, proj.unflatten(1, (6, -1)), context

    def patch_embedding(x_BCTHW):  # P
        return wan.patch_embedding(i2v(x_BCTHW)).flatten(2).transpose(1, 2).contiguous()

    def output_layer(h, temb):  # O: norm_out, scale_shift_table, proj_out, unpatchify
        shift, scale = (wan.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        h = (wan.norm_out(h.float()) * (1 + scale) + shift).type_as(h)
        h = wan.proj_out(h).reshape(B, T // p_t, H // p_h, W // p_w, p_t, p_h, p_w, -1)
        return h.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3).to(x_BCTHW.dtype)

    rotary_emb = wan.rope(i2v(x_BCTHW))                                                  # no tangent
    (temb, proj, context), (v_temb, v_proj, _) = jvp(time_embedding, (t_B,), (v_B,))    # line 4
    h, g = jvp(patch_embedding, (x_BCTHW,), (v_BCTHW,))                                 # lines 6-7
    for block in wan.blocks:                                                             # line 8
        h, g = jvp(lambda h, p, block=block: block(h, context, p, rotary_emb), (h, proj), (g, v_proj))  # line 10
        h, g = h.detach(), g.detach()                                                    # lines 11-12: sg
    return jvp(lambda h, temb, x, t: net.velocity(output_layer(h, temb), x, t),         # lines 14-15
               (h, temb, x_BCTHW, t_B), (g, v_temb, v_BCTHW, v_B))                       # (+ x0 -> F, if so)


@contextmanager
def attention_for_jvp(attention: str = "math", chunk: int = 1024):
    """Scaled dot-product attention with a forward-mode derivative, inside this context only.

    "math" forces PyTorch's math SDPA backend. "chunked" routes every `scaled_dot_product_attention`
    call (diffusers' native Wan attention makes them) to `chunked_attention` through a thread-local
    `TorchFunctionMode`: no module, processor or global is changed, and leaving the context removes it.
    """
    if attention == "math":
        with sdpa_kernel(SDPBackend.MATH):
            yield
    elif attention == "chunked":
        with _ChunkedAttentionMode(chunk):
            yield
    else:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


class _ChunkedAttentionMode(TorchFunctionMode):
    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nnf.scaled_dot_product_attention:
            return chunked_attention(*args, **kwargs, chunk=self.chunk)
        return func(*args, **kwargs)


def chunked_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False, *, chunk: int = 1024):
    """`scaled_dot_product_attention` on (B, heads, N, D) whose JVP needs O(chunk^2) extra memory, not O(N^2)."""
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise ValueError("chunked_attention supports plain attention only (no mask, dropout, causal, gqa)")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _ChunkedJvpAttention.apply(query, key, value, scale, chunk)


class _ChunkedJvpAttention(torch.autograd.Function):
    """Forward: SDPA. JVP of O = softmax(S) V, S = s Q K^T, from (dQ, dK, dV), flash-style:

        dS = s (dQ K^T + Q dK^T),  dO_i = sum_j P_ij (dS_ij V_j + dV_j) - mu_i O_i,  mu_i = sum_j P_ij dS_ij,
    accumulated over key chunks with an online softmax (running max m, normaliser l) for each query chunk.
    """

    @staticmethod
    def forward(query, key, value, scale, chunk):
        return nnf.scaled_dot_product_attention(query, key, value, scale=scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        query, key, value, ctx.scale, ctx.chunk = inputs
        ctx.save_for_forward(query, key, value, output)

    @staticmethod
    def jvp(ctx, dq, dk, dv, _scale, _chunk):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = (torch.zeros_like(x) if d is None else d for x, d in ((q, dq), (k, dk), (v, dv)))
        s, c = ctx.scale, ctx.chunk
        d_out = torch.empty_like(out)
        for i in range(0, q.shape[-2], c):
            qi, dqi = q[..., i:i + c, :], dq[..., i:i + c, :]
            m = qi.new_full(qi.shape[:-1] + (1,), -math.inf)    # running row max of S
            l = torch.zeros_like(m)                              # sum_j exp(S_ij - m)
            mu = torch.zeros_like(m)                             # sum_j exp(S_ij - m) dS_ij
            acc = qi.new_zeros(qi.shape[:-1] + v.shape[-1:])     # sum_j exp(S_ij - m) (dS_ij V_j + dV_j)
            for j in range(0, k.shape[-2], c):
                kj, dkj, vj, dvj = k[..., j:j + c, :], dk[..., j:j + c, :], v[..., j:j + c, :], dv[..., j:j + c, :]
                s_ij = s * (qi @ kj.transpose(-1, -2))
                ds_ij = s * (dqi @ kj.transpose(-1, -2) + qi @ dkj.transpose(-1, -2))
                m_new = torch.maximum(m, s_ij.amax(-1, keepdim=True))
                alpha, p_ij = torch.exp(m - m_new), torch.exp(s_ij - m_new)
                pds_ij = p_ij * ds_ij
                l = alpha * l + p_ij.sum(-1, keepdim=True)
                mu = alpha * mu + pds_ij.sum(-1, keepdim=True)
                acc = alpha * acc + pds_ij @ vj + p_ij @ dvj
                m = m_new
            d_out[..., i:i + c, :] = (acc - mu * out[..., i:i + c, :]) / l
        return d_out
