"""LiT: the token mixer and a whole block, LiT (linear attention) against DiT (softmax attention). GPU only.

    PYTHONPATH=. python benchmarks/lit.py [--quick]
    PYTHONPATH=. python benchmarks/lit.py --dry     # CPU smoke run of the script itself: tiny sizes, no file

LiT-XL width (1152), bf16, 32k tokens per batch (batch = 32768 / N) at N = 256 / 1024 / 4096 / 16384 tokens
per image (256 / 512 / 1024 / 2048 px through a /8 VAE and patch 2). Cases:
  mixer N<N> ...: qkv -> attention -> output projection (LiT: + the 5x5 depthwise conv on V)
  block N<N> ...: a whole adaLN-Zero block (mixer + MLP + modulation)
each timed forward (with autograd on, as in training) and forward+backward, plus peak memory of fwd+bwd.
Contenders: hfzoo (LiT, 4 heads, the Triton kernel; the depthwise conv by cuDNN, as the model trains),
hfzoo_fused_conv (the conv inside the kernel, as the model samples), dit (DiT-XL, 16 heads, SDPA), torch_reference (LiT
with the PyTorch reference of the linear attention: what CPU users run, fp32 math), torch_compile
(`torch.compile` of that same reference module). The coldstart rows time the first fwd+bwd call of the
hfzoo mixer at each new N (Triton compiles then). rel_err of hfzoo against the reference is kept per case.
Writes results/lit.json and results/lit.png (or $HFZOO_BENCH_OUT).
"""

import sys
import time
import traceback

import torch

from benchmarks.common import Results, bench_ms, first_call_s, peak_gb
from hfzoo.models.lit import LiTConfig
from hfzoo.models.lit.modeling_lit import LiTBlock

TOKENS_PER_BATCH = 32768
SIZES = (256, 1024, 4096, 16384)
DEVICE = "cuda"
SMALL = {}                  # config overrides of the dry run
COMPILE_BUDGET_S = 60       # torch.compile contenders stop once this much wall time went into them


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_block(kind: str, dtype) -> LiTBlock:
    if kind == "dit":
        cfg = LiTConfig.from_preset("LiT-XL/2", attention_type="softmax", num_attention_heads=16, **SMALL)
    else:
        cfg = LiTConfig.from_preset("LiT-XL/2", **SMALL)
    torch.manual_seed(0)
    block = LiTBlock(cfg).to(DEVICE, dtype)
    with torch.no_grad():   # adaLN-Zero starts at zero: give the modulation weights values so every path runs
        for p in block.adaLN_modulation.parameters():
            p.normal_(std=0.02)
    if kind in ("torch_reference", "torch_compile"):
        block.attn.backend = "reference"
    elif kind == "hfzoo":
        block.attn.backend = "triton"
    elif kind == "hfzoo_fused_conv":             # the depthwise conv inside the kernel (the model's no-grad path)
        block.attn.backend, block.attn.fused_conv = "triton", True
    return block


def runner(block, part: str, N: int, dtype, compiled: bool):
    B, D = TOKENS_PER_BATCH // N, block.norm1.normalized_shape[0]
    side = int(N ** 0.5)
    g = torch.Generator(device=DEVICE).manual_seed(N)
    x = torch.randn(B, N, D, device=DEVICE, dtype=dtype, generator=g).requires_grad_()
    c = torch.randn(B, D, device=DEVICE, dtype=dtype, generator=g)
    dy = torch.randn(B, N, D, device=DEVICE, dtype=dtype, generator=g)
    if part == "mixer":
        def f(x):
            return block.attn(x, (side, side))
    else:
        def f(x):
            return block(x, c, (side, side))
    if compiled:
        f = torch.compile(f)

    def fwd():
        return f(x)

    def fwdbwd():
        y = f(x)
        y.backward(dy)
        x.grad = None
        for p in block.parameters():
            p.grad = None
    return fwd, fwdbwd


def bench_case(res: Results, part: str, N: int, dtype, blocks: dict, compile_spent: list):
    tag = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    width = next(iter(blocks.values())).norm1.normalized_shape[0]
    case = f"{part} N{N} B{TOKENS_PER_BATCH // N} D{width} {tag}"
    outs = {}
    for name, block in blocks.items():
        compiled = name == "torch_compile"
        if compiled and compile_spent[0] > COMPILE_BUDGET_S:
            print(f"skip {name} {case}: compile budget spent", flush=True)
            continue
        try:
            fwd, fwdbwd = runner(block, part, N, dtype, compiled)
            t0 = time.perf_counter()
            if name == "hfzoo" and part == "mixer":
                res.add(f"coldstart {case}", name, "s", first_call_s(fwdbwd))
            if not compiled:
                with torch.no_grad():
                    outs[name] = fwd().float()
            if compiled:
                fwdbwd()
                compile_spent[0] += time.perf_counter() - t0
            extra = {}
            if name.startswith("hfzoo") and "torch_reference" in outs:
                extra["rel_err_vs_reference"] = rel_err(outs[name], outs["torch_reference"])
            res.add(f"fwd {case}", name, "ms", bench_ms(fwd), **extra)
            res.add(f"fwdbwd {case}", name, "ms", bench_ms(fwdbwd), **extra)
            res.add(f"fwdbwd {case}", name, "GB", peak_gb(fwdbwd))
        except torch.OutOfMemoryError:
            print(f"{name} {case}: out of memory", flush=True)
            torch.cuda.empty_cache()
        except Exception:
            traceback.print_exc()
    if "hfzoo" in outs and "torch_reference" in outs:
        print(f"   {case}: hfzoo vs reference rel err {rel_err(outs['hfzoo'], outs['torch_reference']):.2e}")


def bench_unfused_conv(res: Results, N: int, dtype, block):
    """The depthwise conv on v left to cuDNN (what run 1 did): v [B, N, H, d] -> per-head images -> conv ->
    back to [B, N, H, d], fwd and fwd+bwd. Cases `dwconv N...`, contender `cudnn`."""
    B, H, d = TOKENS_PER_BATCH // N, block.attn.num_heads, block.attn.head_dim
    side = int(N ** 0.5)
    conv = block.attn.conv
    v = torch.randn(B, N, H, d, device=DEVICE, dtype=dtype).requires_grad_()
    dy = torch.randn(B, N, H, d, device=DEVICE, dtype=dtype)

    def f():
        img = v.permute(0, 2, 3, 1).reshape(B * H, d, side, side)
        out = conv(img.contiguous(memory_format=torch.channels_last))
        return out.reshape(B, H, d, N).permute(0, 3, 1, 2)

    def fb():
        f().backward(dy)
        v.grad = None
        conv.weight.grad = conv.bias.grad = None
    case = f"dwconv N{N} B{B} H{H} d{d} bf16"
    try:
        res.add(f"fwd {case}", "cudnn", "ms", bench_ms(f))
        res.add(f"fwdbwd {case}", "cudnn", "ms", bench_ms(fb))
    except Exception:
        traceback.print_exc()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    res = Results("lit")
    dtype = torch.bfloat16
    if "--dry" in argv:
        return dry_run(res)
    # reference first so hfzoo's rows can carry the error against it
    names = ("torch_reference", "hfzoo", "hfzoo_fused_conv", "dit", "torch_compile")
    blocks = {name: make_block(name, dtype) for name in names}
    for name in ("torch_compile", "hfzoo", "hfzoo_fused_conv"):
        blocks[name].load_state_dict(blocks["torch_reference"].state_dict())
    compile_spent = [0.0] if "--no-compile" not in argv else [float("inf")]
    sizes = SIZES[:2] if quick else SIZES
    # longest first, mixer and block together: the compile budget goes to the sizes the targets name
    for N in sorted(sizes, reverse=True):
        for part in ("mixer", "block"):
            bench_case(res, part, N, dtype, blocks, compile_spent)
            res.save(plot_metric=None)
        bench_unfused_conv(res, N, dtype, blocks["hfzoo"])
    res.rows.sort(key=lambda r: (int(r["case"].split(" N")[1].split()[0]), r["case"]))
    path = res.save(plot_metric="ms")
    if "--sweep" in argv:
        sweep(res, dtype)
        path = res.save(plot_metric=None)     # the plot keeps the contenders only
    print(f"wrote {path}")


def sweep(res: Results, dtype, N: int = 4096):
    """hfzoo mixer fwd+bwd at one size under other tile settings (rows contender 'hfzoo_tune', for tuning)."""
    from hfzoo.ops import launch

    block = make_block("hfzoo", dtype)
    kernels = ("state", "out", "bwd_delta", "bwd_state", "bwd_qkv")
    for block_d in (32, 64):
        for block_n in (32, 64, 128):
            for warps in (4, 8):
                tag = dict(BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps)
                try:
                    with launch.tuning({f"linear_attention.{k}": tag for k in kernels}):
                        fwd, fwdbwd = runner(block, "mixer", N, dtype, False)
                        case = f"mixer N{N} B{TOKENS_PER_BATCH // N} D1152 bf16"
                        res.add(f"fwd {case}", "hfzoo_tune", "ms", bench_ms(fwd), **tag)
                        res.add(f"fwdbwd {case}", "hfzoo_tune", "ms", bench_ms(fwdbwd), **tag)
                except Exception:
                    traceback.print_exc()


def dry_run(res: Results):
    """Run every contender's code path once on the CPU at 16 tokens per image (hidden 64), saving nothing."""
    global DEVICE, TOKENS_PER_BATCH, SMALL, bench_ms, first_call_s, peak_gb
    DEVICE, TOKENS_PER_BATCH, SMALL = "cpu", 32, {"hidden_size": 64}

    def once(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    bench_ms, first_call_s, peak_gb = once, once, lambda fn: (fn(), 0.0)[1]
    dtype = torch.float32
    names = ("torch_reference", "hfzoo", "hfzoo_fused_conv", "dit")
    names += () if "--no-compile" in sys.argv else ("torch_compile",)
    blocks = {name: make_block(name, dtype) for name in names}
    for name in ("hfzoo", "hfzoo_fused_conv"):
        blocks[name].load_state_dict(blocks["torch_reference"].state_dict())
    for part in ("mixer", "block"):
        bench_case(res, part, 16, dtype, blocks, [0.0])
    bench_unfused_conv(res, 16, dtype, blocks["hfzoo"])
    res.rows.sort(key=lambda r: (int(r["case"].split(" N")[1].split()[0]), r["case"]))
    return res


if __name__ == "__main__":
    main()
