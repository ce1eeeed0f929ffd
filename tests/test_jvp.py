"""dF/dt (Eq. 8 / 14) of tiny random Wans: every mode against finite differences and against each other."""
import copy
import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

import workbench.models.jvp as jvp_module
from workbench.models.jvp import ATTEND, chunked_attention, velocity_and_tangent
from workbench.models.wan import Conditioning, build_flownet
from workbench.models.wan_block_jvp import block_jvp, rotary_phases

# preset -> (latent channels, mask channels, latent T, H, W, image tokens): 8 tokens each.
SIZES = {"tiny-wan": (4, 4, 2, 4, 4, 5), "toy": (3, 1, 4, 8, 8, 0)}
# (preset, what the transformer predicts): an x0-predicting net's F = (x_t - x0) / t must differentiate too.
# A diffusion (VP) net's x_vp and timestep depend on t as well (issue 39): its "v" prediction bridged to F.
CASES = [("tiny-wan", "velocity"), ("toy", "velocity"), ("toy", "x0"), ("tiny-wan", "v")]
VP_SCHEDULE = Path(tempfile.mkdtemp()) / "scheduler_config.json"
VP_SCHEDULE.write_text(json.dumps({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                   "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"}))


def make(preset: str, dtype=torch.float32, seed: int = 0, prediction: str = "velocity"):
    """(FlowNet in eval mode, x_t, t, cond, dx/dt) for batch 2; text of 7 tokens (padded to 512 with image tokens)."""
    C, M, T, H, W, n_image = SIZES[preset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vp = str(VP_SCHEDULE) if prediction in ("epsilon", "v") else ""
        net = build_flownet(preset, prediction=prediction, vp_schedule=vp).to(dtype).eval()
        g = torch.Generator().manual_seed(seed)
        x_BCTHW = torch.randn(2, C, T, H, W, generator=g, dtype=dtype)
        mask_BMTHW = torch.zeros(2, M, T, H, W, dtype=dtype)
        mask_BMTHW[:, :, 0] = 1
        cond = Conditioning(torch.randn(x_BCTHW.shape, generator=g, dtype=dtype), mask_BMTHW,
                    torch.randn(2, 7, 32, generator=g, dtype=dtype),
                    torch.randn(2, n_image, 32, generator=g, dtype=dtype) if n_image else None)
        dxdt_BCTHW = torch.randn(x_BCTHW.shape, generator=g, dtype=dtype)
    return net, x_BCTHW, torch.tensor([0.3, 0.8], dtype=dtype), cond, dxdt_BCTHW


class KeepFloat64(TorchFunctionMode):
    """diffusers computes Wan's layer norms and timestep sinusoids after `.float()`; keep float64 there."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.float and args[0].dtype == torch.float64:
            return args[0]
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny ops run ~10x faster on one thread on a shared 2-core machine (no OpenMP waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request):
    preset, prediction = request.param
    return make(preset, prediction=prediction)


@pytest.mark.parametrize("preset, prediction", CASES)
def test_jvp_matches_central_differences_in_float64(preset, prediction):
    """Float64 throughout (diffusers' float32 casts kept float64 by KeepFloat64); central difference, eps 1e-6.

    Its error is truncation, eps^2 |d3F/dt3| / 6, large because Wan embeds timestep = 1000 t in sinusoids:
    measured max|fd - jvp| / max|jvp| = 1.3e-5 at eps 1e-5, 1.8e-7 at 1e-6 (falls as eps^2, as it should),
    ~2e-9 at 1e-7 (rounding). So eps 1e-6 and tolerance 1e-6 * max|dF/dt| (a 5x margin).
    """
    net, x, t, cond, v = make(preset, torch.float64, prediction=prediction)
    eps = 1e-6
    with KeepFloat64():
        f, dfdt = velocity_and_tangent(net, x, t, cond, v, mode="whole")
        _, dtf = velocity_and_tangent(net, x, t, cond, torch.zeros_like(v), mode="whole")
        _, fd_mode = velocity_and_tangent(net, x, t, cond, v, mode="finite_difference", fd_eps=eps)
        with torch.no_grad():
            f_plain = net(x, t, cond)
            fd = (net(x + eps * v, t + eps, cond) - net(x - eps * v, t - eps, cond)) / (2 * eps)
    torch.testing.assert_close(f, f_plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dfdt, fd, rtol=1e-6, atol=1e-6 * fd.abs().max().item())
    torch.testing.assert_close(fd_mode, fd, rtol=1e-12, atol=1e-12)   # the built-in fallback is this formula
    # Both terms of Eq. 14 are there: d_t F alone (dx/dt = 0) and grad_x F . dx/dt are both non-zero.
    assert dtf.abs().max() > 1e-3 * dfdt.abs().max() and (dfdt - dtf).abs().max() > 1e-3 * dfdt.abs().max()


@pytest.mark.parametrize("mode", ["blockwise", "reverse", "reverse_blockwise"])
def test_modes_equal_whole_forward_mode(case, mode):
    """float32, equal to rounding: blockwise is the hand-written block JVP (its own kernels: one matmul pair per linear,
    the bias added apart), reverse mode sums differently."""
    net, x, t, cond, v = case
    f, dfdt = velocity_and_tangent(net, x, t, cond, v, mode="whole")
    f_m, dfdt_m = velocity_and_tangent(net, x, t, cond, v, mode=mode)
    scale = dfdt.abs().max().item()
    torch.testing.assert_close(f_m, f, rtol=1e-6, atol=1e-6 * f.abs().max().item())
    torch.testing.assert_close(dfdt_m, dfdt, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("mode", ["whole", "blockwise"])
def test_chunked_attention_equals_math(case, mode):
    net, x, t, cond, v = case
    f, dfdt = velocity_and_tangent(net, x, t, cond, v, mode=mode, attention="math")
    # chunk 3 does not divide the 8 video tokens nor the 512 + 5 context tokens.
    f_c, dfdt_c = velocity_and_tangent(net, x, t, cond, v, mode=mode, attention="chunked", chunk=3)
    torch.testing.assert_close(f_c, f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dfdt_c, dfdt, rtol=1e-5, atol=1e-5 * dfdt.abs().max().item())


@pytest.mark.parametrize("attention", list(ATTEND))
def test_blockwise_runs_in_the_weights_dtype_under_autocast(case, attention):
    """train.mixed_precision bf16 wraps CCD's tangent in autocast, which the hand-written out= kernels do not follow:
    the block JVP leaves it off and gives what it gives without it."""
    net, x, t, cond, v = case
    f, dfdt = velocity_and_tangent(net, x, t, cond, v, mode="blockwise", attention=attention)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f_a, dfdt_a = velocity_and_tangent(net, x, t, cond, v, mode="blockwise", attention=attention)
    torch.testing.assert_close((f_a, dfdt_a), (f, dfdt), rtol=0, atol=0)


# (heads, head dim, ffn dim, cross_attn_norm, image tokens (the image-context branch: `added_kv_proj_dim`), grid)
BLOCKS = [(2, 8, 32, True, 5, (2, 2, 3)), (4, 6, 40, False, 0, (1, 3, 5)), (1, 12, 24, True, 3, (3, 1, 2))]


@pytest.mark.parametrize("attention", list(ATTEND))
@pytest.mark.parametrize("heads, d, ffn, cross_norm, n_image, grid", BLOCKS,
                         ids=["image-context", "text-only-no-norm2", "one-head"])
def test_block_jvp_equals_torch_func_jvp_over_the_block(heads, d, ffn, cross_norm, n_image, grid, attention):
    """The hand-written JVP of a `WanTransformerBlock` against torch.func.jvp over diffusers' own block (math SDPA),
    float64, random parameters (norm weights and biases too), tangents on h and on the time projection."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock
    torch.manual_seed(0)
    D, B, (T, H, W) = heads * d, 2, grid
    block = WanTransformerBlock(D, ffn, heads, cross_attn_norm=cross_norm, eps=1e-6,
                                added_kv_proj_dim=D if n_image else None).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    rotary_emb = WanRotaryPosEmbed(d, (1, 1, 1), 32)(torch.zeros(B, 1, T, H, W))
    h, g = (torch.randn(B, T * H * W, D, dtype=torch.float64) for _ in range(2))
    proj, dproj = (torch.randn(B, 6, D, dtype=torch.float64) for _ in range(2))
    context = torch.randn(B, (512 if n_image else 7) + n_image, D, dtype=torch.float64)  # image tokens, then text
    with torch.no_grad(), KeepFloat64():
        with sdpa_kernel(SDPBackend.MATH):
            want = torch.func.jvp(lambda h, p: block(h, context, p, rotary_emb), (h, proj), (g, dproj))
        got = block_jvp(block, torch.stack([h, g]), proj, dproj, context, rotary_phases(rotary_emb, h.dtype),
                        ATTEND[attention])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item())
    assert want[1].abs().max() > 1e-3 * want[0].abs().max()


@pytest.mark.parametrize("tile", [1 << 22, 1], ids=["query-rows-batched", "one-chunk-of-rows"])
@pytest.mark.parametrize("logit_scale", [1.0, 100.0], ids=["fixed-reference", "online-max"])
@pytest.mark.parametrize("n_q, n_k", [(37, 37), (64, 64), (100, 100), (37, 100), (1, 5)])
def test_chunked_attention_jvp_equals_math_sdpa(n_q, n_k, logit_scale, tile, monkeypatch):
    """Random (B=2, heads=3, N, D=8) Q, K, V and tangents in float64; chunk 16 does not divide 37, 100, 5.

    logit_scale 1 keeps |S| under the bound where exp needs no reference (m = 0); 100 takes the online max path
    (running max, rescaled sums). tile 1 runs one chunk of query rows at a time instead of all rows at once.
    """
    monkeypatch.setattr(jvp_module, "_TILE", tile)
    g = torch.Generator().manual_seed(n_q + n_k)
    q, dq = (torch.randn(2, 3, n_q, 8, generator=g, dtype=torch.float64) for _ in range(2))
    k, v, dk, dv = (torch.randn(2, 3, n_k, 8, generator=g, dtype=torch.float64) for _ in range(4))
    q = logit_scale * q
    with sdpa_kernel(SDPBackend.MATH):
        out, d_out = torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (dq, dk, dv))
    out_c, d_out_c = torch.func.jvp(lambda q, k, v: chunked_attention(q, k, v, chunk=16), (q, k, v), (dq, dk, dv))
    torch.testing.assert_close(out_c, out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_out_c, d_out, rtol=1e-10, atol=1e-10 * d_out.abs().max().item())
    # torch.autograd.forward_ad reaches the same rule.
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = chunked_attention(*(fwAD.make_dual(a, b) for a, b in ((q, dq), (k, dk), (v, dv))), chunk=16)
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, d_out, rtol=1e-10,
                                   atol=1e-10 * d_out.abs().max().item())


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_chunked_attention_jvp_with_a_tangent_on_the_query_only(dtype, tol):
    """Cross-attention: the text / image context (K, V) has no tangent. 300 queries, 4 heads x 32, chunk 64."""
    g = torch.Generator().manual_seed(3)
    q, dq = (torch.randn(1, 4, 300, 32, generator=g, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(1, 4, 77, 32, generator=g, dtype=dtype) for _ in range(2))
    with sdpa_kernel(SDPBackend.MATH):
        out, d_out = torch.func.jvp(lambda q: F.scaled_dot_product_attention(q, k, v), (q,), (dq,))
    out_c, d_out_c = torch.func.jvp(lambda q: chunked_attention(q, k, v, chunk=64), (q,), (dq,))
    torch.testing.assert_close(out_c, out, rtol=tol, atol=tol)
    torch.testing.assert_close(d_out_c, d_out, rtol=tol, atol=tol * d_out.abs().max().item())
    # Without any tangent it is plain SDPA.
    torch.testing.assert_close(chunked_attention(q, k, v, chunk=64), out, rtol=tol, atol=tol)


@pytest.mark.parametrize("fn", [
    lambda x, w, b: F.linear(x, w, b), lambda x, w, b: F.linear(x, w),
    lambda x, w, b: F.layer_norm(x, (6,), w[0], b, 1e-6), lambda x, w, b: F.layer_norm(x, (6,)),
    lambda x, w, b: F.rms_norm(x, (6,), w[0], 1e-6), lambda x, w, b: F.rms_norm(x, (6,))],
    ids=["linear", "linear-no-bias", "layer-norm", "layer-norm-plain", "rms-norm", "rms-norm-plain"])
def test_tangent_rules_equal_the_generic_ones(fn):
    """The hand-written rules of `attention_for_jvp` against PyTorch's own, float64, a tangent on x only."""
    g = torch.Generator().manual_seed(0)
    x, dx = (torch.randn(2, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    w, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    want = torch.func.jvp(lambda x: fn(x, w, b), (x,), (dx,))
    with jvp_module.attention_for_jvp("chunked"):
        got = torch.func.jvp(lambda x: fn(x, w, b), (x,), (dx,))
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode, attention", [("whole", "math"), ("blockwise", "chunked"), ("reverse", "math"),
                                             ("reverse_blockwise", "math"), ("finite_difference", "math")])
def test_pure(mode, attention):
    """No parameter changes or .grad, processors untouched, no SDPA setting or torch-function mode left behind."""
    net, x, t, cond, v = make("tiny-wan")
    before = copy.deepcopy(net.state_dict())
    processors = {name: m.processor for name, m in net.named_modules() if hasattr(m, "processor")}
    inputs = [a.clone() for a in (x, t, v, cond.first_BCTHW, cond.text_BLD, cond.image_BND)]
    first = velocity_and_tangent(net, x, t, cond, v, mode=mode, attention=attention, chunk=3)
    again = velocity_and_tangent(net, x, t, cond, v, mode=mode, attention=attention, chunk=3)
    for a, b in zip(first, again):                                              # deterministic
        assert torch.equal(a, b) and not a.requires_grad and a.grad_fn is None  # detached (stop-gradient)
    for name, p in net.named_parameters():
        assert p.grad is None and p.requires_grad and torch.equal(p, before[name]), name
    assert processors == {name: m.processor for name, m in net.named_modules() if hasattr(m, "processor")}
    assert torch.backends.cuda.math_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch._C._len_torch_function_stack() == 0
    for a, b in zip(inputs, (x, t, v, cond.first_BCTHW, cond.text_BLD, cond.image_BND)):
        assert torch.equal(a, b)


def test_bad_arguments_are_named():
    net, x, t, cond, v = make("toy")
    with pytest.raises(ValueError, match="mode"):
        velocity_and_tangent(net, x, t, cond, v, mode="forward")
    with pytest.raises(ValueError, match="attention"):
        velocity_and_tangent(net, x, t, cond, v, attention="flash")
    with pytest.raises(ValueError, match="chunked"):
        velocity_and_tangent(net, x, t, cond, v, mode="reverse", attention="chunked")
