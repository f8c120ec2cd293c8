"""A whole MosaicBERT layer as one autograd node (the Triton path of ``MosaicBertLayer``).

The module path records a graph node per operation: about 13 per layer (QKV projection, view, attention, reshape,
dense, dropout, residual add, LayerNorm, gated projection, GeGLU, ``wo``, residual add, LayerNorm), and each op's
Python wrapper checks its arguments again in every layer. At MosaicBERT-base's training batch (9k real tokens) the
step is bound by that host work, not by the GPU (benchmarks/NOTES.md, "MosaicBERT"). Here the layer's forward
calls the same kernels directly -- ``addmm``, the varlen ALiBi attention kernel, ``native_dropout``,
``native_layer_norm``, the GeGLU kernel -- with autograd off, and its backward calls their backward kernels in
order. Two residual gradient additions become the ``C`` operand of the input-gradient GEMMs (``addmm``).

Numerics are the module path's: the same kernels in the same order (the dropout masks are drawn from the same
generators: torch's CUDA generator for the hidden dropout, a Philox seed from torch's CPU generator for GeGLU's);
tensors saved for the backward are the ones the module path's nodes save (the last layer's attention output rows are
re-gathered in the backward instead of kept).

The caller (``MosaicBertEncoder``) decides once per forward that the kernels can run (``fused_path_ok``) and
hands over offsets it built (int32, contiguous), so no per-layer argument checks run here.
"""

from __future__ import annotations

import torch

from ...ops.dispatch import apply_function
from ...ops.geglu import geglu_backward, geglu_forward
from ...ops.residual_layernorm import residual_layernorm_backward, residual_layernorm_forward
from ...ops.varlen_alibi_attention import _backward as _attention_backward
from ...ops.varlen_alibi_attention import _forward as _attention_forward

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default
_dropout_backward = torch.ops.aten.native_dropout_backward.default


class MosaicBertLayerFunction(torch.autograd.Function):
    """``y = LN2(a + Wo(GeGLU(a Wg)))``, ``a = LN1(x + Dropout(Dense(Attention(Wqkv x))))`` in one node.

    ``meta`` (not differentiable): ``(cu_seqlens int32, max_seqlen, slopes fp32, subset_idx or None, heads,
    attention-output dropout p, GeGLU dropout p, eps1, eps2)``. With ``subset_idx`` (the last layer of MLM training) the output has
    only those rows.
    """

    @staticmethod
    def forward(ctx, x, wqkv, bqkv, wd, bd, ln1w, ln1b, wg, wo, bo, ln2w, ln2b, meta):
        cu, max_seqlen, slopes, subset, heads, p, p_mlp, eps1, eps2, resln = meta
        T, hidden = x.shape
        head_dim = hidden // heads
        scale = head_dim ** -0.5
        qkv = torch.addmm(bqkv, x, wqkv.t())
        q4 = qkv.view(T, 3, heads, head_dim)
        o, lse = _attention_forward(q4[:, 0], q4[:, 1], q4[:, 2], cu, max_seqlen, slopes, scale)
        o2 = o.view(T, hidden)
        if subset is not None:
            o_s, x_s = o2.index_select(0, subset), x.index_select(0, subset)
        else:
            o_s, x_s = o2, x
        d = torch.addmm(bd, o_s, wd.t())
        if resln:   # dropout + residual + LayerNorm as one kernel each (residual_layernorm.py)
            seed1 = int(torch.randint(0, 2 ** 31 - 1, ())) if p > 0 else 0
            a, r1, mean1, rstd1 = residual_layernorm_forward(d, x_s.contiguous(), ln1w, ln1b, eps1, p, seed1)
            seed = int(torch.randint(0, 2 ** 31 - 1, ())) if p_mlp > 0 else 0
            g = torch.mm(a, wg.t())
            y = geglu_forward(g, p_mlp, seed)
            out, r2, mean2, rstd2 = residual_layernorm_forward(torch.addmm(bo, y, wo.t()), a, ln2w, ln2b, eps2,
                                                               0.0, 0)
            ctx.save_for_backward(x, wqkv, wd, ln1w, ln1b, wg, wo, ln2w, ln2b, qkv, o, lse, r1, mean1, rstd1,
                                  a, g, y, r2, mean2, rstd2)
            ctx.meta, ctx.seed, ctx.seed1 = meta, seed, seed1
            return out
        mask = None
        if p > 0:
            d, mask = torch.native_dropout(d, p, True)
        r1 = d.add_(x_s)
        # GeGLU's dropout seed, drawn where the module path draws it (after the hidden dropout; CPU generator, no sync)
        seed = int(torch.randint(0, 2 ** 31 - 1, ())) if p_mlp > 0 else 0
        a, mean1, rstd1 = torch.native_layer_norm(r1, (hidden,), ln1w, ln1b, eps1)
        g = torch.mm(a, wg.t())
        y = geglu_forward(g, p_mlp, seed)
        r2 = torch.addmm(bo, y, wo.t()).add_(a)
        out, mean2, rstd2 = torch.native_layer_norm(r2, (hidden,), ln2w, ln2b, eps2)
        ctx.save_for_backward(x, wqkv, wd, ln1w, ln1b, wg, wo, ln2w, ln2b, qkv, o, lse, mask, r1, mean1, rstd1,
                              a, g, y, r2, mean2, rstd2)
        ctx.meta, ctx.seed = meta, seed
        return out

    @staticmethod
    def backward(ctx, dout):
        if ctx.meta[-1]:   # residual_ln
            return _backward_resln(ctx, dout)
        (x, wqkv, wd, ln1w, ln1b, wg, wo, ln2w, ln2b, qkv, o, lse, mask, r1, mean1, rstd1,
         a, g, y, r2, mean2, rstd2) = ctx.saved_tensors
        p, p_mlp, seed = ctx.meta[5], ctx.meta[6], ctx.seed
        need = ctx.needs_input_grad
        hidden = x.shape[1]
        dx = dwqkv = dbqkv = dwd = dbd = dln1w = dln1b = dwg = dwo = dbo = dln2w = dln2b = None

        # second sub-block: LN2(r2), r2 = a + Wo(GeGLU(a Wg)) + bo
        dr2, dln2w, dln2b = _layer_norm_backward(dout.contiguous(), r2, (hidden,), mean2, rstd2, ln2w, ln2b,
                                                 [True, need[10], need[11]])
        if need[9]:
            dbo = dr2.sum(0)
        if need[8]:
            dwo = dr2.t().mm(y)
        dg = geglu_backward(g, dr2.mm(wo), p_mlp, seed)
        if need[7]:
            dwg = dg.t().mm(a)
        da = torch.addmm(dr2, dg, wg)                      # the residual's gradient folded into the GEMM

        # first sub-block: LN1(r1), r1 = x + Dropout(Dense(o)) (rows of subset only, in the last layer)
        dr1, dln1w, dln1b = _layer_norm_backward(da, r1, (hidden,), mean1, rstd1, ln1w, ln1b,
                                                 [True, need[5], need[6]])
        dd = _dropout_backward(dr1, mask, 1.0 / (1.0 - p)) if mask is not None else dr1
        if need[4]:
            dbd = dd.sum(0)
        dx, dwqkv, dbqkv, dwd = _attention_and_input_grads(ctx, dd, x, wqkv, wd, qkv, o, lse, dr1)
        return dx, dwqkv, dbqkv, dwd, dbd, dln1w, dln1b, dwg, dwo, dbo, dln2w, dln2b, None


def _attention_and_input_grads(ctx, dd, x, wqkv, wd, qkv, o, lse, dr1):
    """The shared tail of both backwards: dense, attention and QKV projection gradients, and x's gradient."""
    cu, max_seqlen, slopes, subset, heads = ctx.meta[:5]
    need = ctx.needs_input_grad
    T, hidden = x.shape
    head_dim = hidden // heads
    dwd = dwqkv = dbqkv = dx = None
    o2 = o.view(T, hidden)
    if need[3]:
        dwd = dd.t().mm(o2.index_select(0, subset) if subset is not None else o2)
    do = dd.mm(wd)
    if subset is not None:
        do = do.new_zeros(T, hidden).index_copy_(0, subset, do)
    dqkv = torch.empty(T, 3, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    q4 = qkv.view(T, 3, heads, head_dim)
    _attention_backward(q4[:, 0], q4[:, 1], q4[:, 2], o, lse, do.view(T, heads, head_dim), dqkv, cu, max_seqlen,
                        slopes, head_dim ** -0.5)
    dqkv2 = dqkv.view(T, 3 * hidden)
    if need[2]:
        dbqkv = dqkv2.sum(0)
    if need[1]:
        dwqkv = dqkv2.t().mm(x)
    if need[0]:
        if subset is not None:
            dx = dqkv2.mm(wqkv).index_add_(0, subset, dr1)
        else:
            dx = torch.addmm(dr1, dqkv2, wqkv)         # the residual's gradient folded into the GEMM
    return dx, dwqkv, dbqkv, dwd


def _backward_resln(ctx, dout):
    (x, wqkv, wd, ln1w, ln1b, wg, wo, ln2w, ln2b, qkv, o, lse, r1, mean1, rstd1,
     a, g, y, r2, mean2, rstd2) = ctx.saved_tensors
    p, p_mlp = ctx.meta[5], ctx.meta[6]
    need = ctx.needs_input_grad
    dwg = dwo = None
    # LN2(f + a): dr2 is the gradient of both f = Wo(...) + bo and the residual a; its column sum is bo's gradient
    dr2, _, dln2w, dln2b, dbo = residual_layernorm_backward(dout.contiguous(), r2, ln2w, mean2, rstd2, 0.0, 0,
                                                            ln2w.dtype)
    if need[8]:
        dwo = dr2.t().mm(y)
    dg = geglu_backward(g, dr2.mm(wo), p_mlp, ctx.seed)
    if need[7]:
        dwg = dg.t().mm(a)
    da = torch.addmm(dr2, dg, wg)
    # LN1(Dropout(d) + x): dr1 for the residual, dd for d through the mask, dbd = dd's column sum
    dr1, dd, dln1w, dln1b, dbd = residual_layernorm_backward(da, r1, ln1w, mean1, rstd1, p, ctx.seed1, ln1w.dtype)
    dx, dwqkv, dbqkv, dwd = _attention_and_input_grads(ctx, dd, x, wqkv, wd, qkv, o, lse, dr1)
    return (dx, dwqkv, dbqkv, dwd, dbd if need[4] else None, dln1w if need[5] else None, dln1b if need[6] else None,
            dwg, dwo, dbo if need[9] else None, dln2w if need[10] else None, dln2b if need[11] else None, None)


def fused_layer(layer, hidden_states, cu_seqlens, max_seqlen: int, slopes, subset_idx=None,
                residual_ln: bool = False):
    """Run ``MosaicBertLayer`` ``layer`` as one node (see the module docstring); its dropout is on in training.
    ``residual_ln``: each dropout + residual + LayerNorm as one Triton kernel each way (``residual_layernorm.py``)."""
    attn, mlp = layer.attention, layer.mlp
    p, p_mlp = (float(attn.output.dropout.p), float(mlp.dropout.p)) if layer.training else (0.0, 0.0)
    meta = (cu_seqlens, max_seqlen, slopes, subset_idx, attn.self.num_heads, p, p_mlp,
            attn.output.LayerNorm.eps, mlp.layernorm.eps, residual_ln)
    args = (hidden_states, attn.self.Wqkv.weight, attn.self.Wqkv.bias, attn.output.dense.weight,
            attn.output.dense.bias, attn.output.LayerNorm.weight, attn.output.LayerNorm.bias,
            mlp.gated_layers.weight, mlp.wo.weight, mlp.wo.bias, mlp.layernorm.weight, mlp.layernorm.bias, meta)
    return apply_function(MosaicBertLayerFunction, *args)


__all__ = ["MosaicBertLayerFunction", "fused_layer"]
