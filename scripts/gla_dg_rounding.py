"""Where the GLA backward's gate-gradient error comes from in bf16: a CPU emulation of the kernels' roundings.

The chunked backward (hfzoo/ops/gla_chunk.py) computes dg as a reverse cumsum of q*dq - k*dk, whose terms
cancel for every pair of tokens on the same side of t; roundings that differ between the q side and the k side
therefore survive. This script recomputes dq, dk and dg in fp64 per 64-token chunk, rounding exactly where the
kernels round (bf16 chunk states h and state gradients dh, bf16 operands of the state updates and of the
intra-chunk matmuls), and compares with autograd through ``chunk_gla_torch`` in fp64.

    python scripts/gla_dg_rounding.py [--decay 1] [--intra bf16|tf32|exact] [--fin-rounded]

Findings (benchmarks/NOTES.md): with ~-8 log decay per token, rounding dht only on the dk side gives dg errors
of 0.18 (the H200 measured 0.16); rounding it the same way in the final-state term gives 0.022 (0.008 with
another draw). With ordinary gates the bf16 intra-chunk matmuls dominate (dg 3.6e-2, as measured on the H200;
tf32 operands 1.4e-2, exact 1.3e-2).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hfzoo.ops.gla import chunk_gla_torch  # noqa: E402

D = torch.float64


def bf16(x):
    return x.to(torch.bfloat16).to(D)


def tf32(x):
    m, e = torch.frexp(x)
    return torch.ldexp(torch.round(m * 2**11) / 2**11, e)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--decay", type=float, default=1.0, help="g = logsigmoid(randn) * decay / 4")
    ap.add_argument("--intra", choices=["bf16", "tf32", "exact"], default="bf16")
    ap.add_argument("--fin-rounded", action="store_true", help="round dht in the final-state term too")
    ap.add_argument("--T", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    T, K, V, C = args.T, 128, 128, 64
    r_in = {"bf16": bf16, "tf32": tf32, "exact": lambda x: x}[args.intra]
    q, k, v, do = bf16(torch.randn(T, K)), bf16(torch.randn(T, K)), bf16(torch.randn(T, V)), bf16(torch.randn(T, V))
    g = (F.logsigmoid(torch.randn(T, K)) * args.decay / 4).float().to(D)
    dht = torch.randn(K, V, dtype=D)
    scale = K ** -0.5

    ins = [t.clone().requires_grad_() for t in (q, k, v, g)]
    o, ht = chunk_gla_torch(*[t[None, :, None] for t in ins], output_final_state=True)
    dq_ref, _, _, dg_ref = torch.autograd.grad((o, ht), ins, (do[None, :, None], dht[None, None].float()))

    NT = T // C
    chunks = [slice(c * C, (c + 1) * C) for c in range(NT)]
    hs, dhs = [], [None] * NT
    S = torch.zeros(K, V, dtype=D)
    for sl in chunks:  # states before each chunk (stored bf16)
        gc = g[sl].cumsum(0)
        hs.append(bf16(S))
        S = S * gc[-1].exp()[:, None] + bf16(k[sl] * (gc[-1] - gc).exp()).T @ v[sl]
    dS = dht.clone()
    for c in reversed(range(NT)):  # state gradients after each chunk (stored bf16)
        sl = chunks[c]
        gc = g[sl].cumsum(0)
        dhs[c] = bf16(dS)
        dS = dS * gc[-1].exp()[:, None] + bf16(scale * q[sl] * gc.exp()).T @ do[sl]

    causal = torch.ones(C, C, dtype=torch.bool).tril()
    dq_all, dgl = torch.zeros(T, K, dtype=D), torch.zeros(T, K, dtype=D)
    for c, sl in enumerate(chunks):
        gc = g[sl].cumsum(0)
        qc, kc, vc, doc = q[sl], k[sl], v[sl], do[sl]
        dA = torch.where(causal, scale * doc @ vc.T, 0)
        dq = scale * (doc @ hs[c].T) * gc.exp() + (r_in(dA) @ r_in(kc * (-gc).exp())) * gc.exp()
        dk = (vc @ dhs[c].T) * (gc[-1] - gc).exp() + (r_in(dA).T @ r_in(qc * gc.exp())) * (-gc).exp()
        dq_all[sl], dgl[sl] = dq, qc * dq - kc * dk
    fin = (S * (bf16(dht) if args.fin_rounded else dht)).sum(-1)
    dg = dgl.flip(0).cumsum(0).flip(0) + fin
    print(f"decay x{args.decay} intra {args.intra} fin {'rounded' if args.fin_rounded else 'fp32'}: "
          f"dq {rel(dq_all, dq_ref):.1e}  dg {rel(dg, dg_ref):.1e}")


if __name__ == "__main__":
    main()
