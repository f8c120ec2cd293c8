"""MosaicBERT vs HF BERT and ModernBERT: a BERT-base MLM training step on a half-padded batch. GPU only.

    PYTHONPATH=. HFZOO_BENCH_OUT=out python benchmarks/mosaicbert.py          # the results JSON
    PYTHONPATH=. HFZOO_BENCH_OUT=out python benchmarks/mosaicbert.py profile  # top CUDA kernels + bwd configs
    PYTHONPATH=. HFZOO_BENCH_OUT=out python benchmarks/mosaicbert.py rounds 2 hfzoo hfzoo_modules hf_bert
        # the MLM step of the named contenders, interleaved in one process for 2 rounds (mosaicbert_rounds.json)

Every MLM-step row comes with the step's GPU time (``kernel ms``: summed kernel time per step, torch.profiler),
``launches`` per step (kernels and copies the GPU ran), ``syncs`` per step (host waits on the stream) and the host
anatomy of a step (``host fwd ms``, ``host bwd ms``: host time of forward and backward after a synchronisation;
``gpu tail ms``: how long the GPU still works once the backward call has returned). Contender ``hfzoo_modules``
is hfzoo with each layer run module by module (``encoder.fused_layers = False``), the path before the fused layer;
``hfzoo_resln`` is hfzoo with its dropout + residual + LayerNorm steps as Triton kernels (``fused_residual_ln``).

Workload (as in ARCHITECTURE.md): bf16 weights, batch 32 x 512 with lengths uniform in 64..512 (about 45%
padding), 30% of the real tokens masked; one step = forward + loss + backward (no optimizer).
Throughput counts real (non-padding) tokens. Inference: the encoder alone (no head), eval mode, no grad, the same
batch (case ``infer encoder ...``, real tokens/s). Then the attention alone: hfzoo's varlen ALiBi kernel vs
SDPA over the padded batch with a materialized ALiBi + padding bias, and (last, because it compiles)
PyTorch FlexAttention with an ALiBi score_mod and a document block mask over the same packed tokens.
"""

import collections
import gc
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Results, bench_ms, first_call_s, seconds_per_step
from hfzoo.models.mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM
from hfzoo.ops.varlen_alibi_attention import alibi_slopes, varlen_alibi_attention_qkvpacked

B, S, LO, HI = 32, 512, 64, 512
H, D, HIDDEN, LAYERS, VOCAB = 12, 64, 768, 12, 30522
DEV, DT = "cuda", torch.bfloat16


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(LO, HI + 1, (B,), generator=g)
    mask = (torch.arange(S)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, VOCAB, (B, S), generator=g) * mask
    labels = torch.where((torch.rand(B, S, generator=g) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    return lengths, {"input_ids": ids.to(DEV), "attention_mask": mask.to(DEV), "labels": labels.to(DEV)}


def step_fn(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        model(**batch).loss.backward()
    return step


def build(name):
    from transformers import AutoModelForMaskedLM, BertConfig, ModernBertConfig

    if name.startswith("hfzoo"):
        # "hfzoo": mosaic-bert-base sizes (GeGLU with 3072 per half); "hfzoo_ffn2048": BERT-base's parameter count;
        # "hfzoo_modules": "hfzoo" with its layers run module by module (one graph node per op)
        cfg = MosaicBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=H,
                               intermediate_size=2048 if name == "hfzoo_ffn2048" else 3072)
        model = MosaicBertForMaskedLM(cfg)
        model.bert.encoder.fused_layers = name != "hfzoo_modules"
        model.bert.encoder.fused_residual_ln = name == "hfzoo_resln"   # residual_layernorm kernels in the layers
    elif name == "hf_bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=H,
                         intermediate_size=3072)
        model = AutoModelForMaskedLM.from_config(cfg, attn_implementation="sdpa")
    else:  # modernbert / modernbert_sparse / modernbert_fa2
        cfg = ModernBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=H,
                               intermediate_size=1152, sparse_prediction=name == "modernbert_sparse",
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=3, cls_token_id=4)
        impl = "flash_attention_2" if name == "modernbert_fa2" else "sdpa"
        model = AutoModelForMaskedLM.from_config(cfg, attn_implementation=impl)
    return model.to(device=DEV, dtype=DT).train()


def kernel_profile(step, steps: int = 5, table: bool = False):
    """GPU side of ``steps`` calls of ``step`` under torch.profiler: per step the summed kernel time (ms), the GPU
    operations run (kernels, copies, fills), their union of busy time (ms; overlapping kernels count once), the host's
    waits on the GPU (stream/device synchronisations, the profiler's final one excluded), and aten / Triton launches.
    With ``table``, also the top-25 kernel table."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.events()
    device = [e for e in events if e.device_type == DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in device)
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    names = collections.Counter(e.name for e in events if e.device_type == DeviceType.CPU)
    syncs = names["cudaStreamSynchronize"] + names["cudaDeviceSynchronize"] + names["cudaEventSynchronize"] - 1
    out = {"kernel ms": sum(e.time_range.elapsed_us() for e in device) / steps / 1e3,
           "busy ms": busy / steps / 1e3,
           "launches": len(device) / steps,
           "aten launches": names["cudaLaunchKernel"] / steps + names["cudaLaunchKernelExC"] / steps,
           "triton launches": (names["cuLaunchKernelEx"] + names["cuLaunchKernel"]) / steps,
           "syncs": max(syncs, 0) / steps}
    if table:
        out["table"] = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25,
                                                 max_name_column_width=70)
    return out


def step_anatomy(model, batch, steps: int = 20):
    """Host time of the MLM step's forward and backward, each step starting on an idle GPU (synchronised), and the
    GPU's tail once ``backward()`` has returned (ms, means over ``steps``). A tail near 0 means the host was the
    bottleneck all the way; host fwd + bwd below the step's kernel time means the GPU was."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = collections.Counter()
    for i in range(steps + 3):
        for p in params:
            p.grad = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        if i >= 3:
            sums.update({"host fwd ms": t1 - t0, "host bwd ms": t2 - t1, "gpu tail ms": t3 - t2,
                         "synced step ms": t3 - t0})
    return {k: v / steps * 1e3 for k, v in sums.items()}


def time_contender(res, name, model, batch, step, real, case, infer_case, anatomy: bool, infer: bool = True,
                   **extra):
    """One contender's MLM-step rows (ms, real tokens/s, peak GB; with ``anatomy`` also ``step_rows``), then, with
    ``infer``, its encoder's inference rows (eval mode, no gradients). ``extra`` tags every row (e.g. ``round``)."""
    ms = bench_ms(step, warmup=200, rep=1500)
    res.add(case, name, "ms", ms, **extra)
    res.add(case, name, "tokens/s", real / ms * 1e3, **extra)
    res.add(case, name, "GB", torch.cuda.max_memory_allocated() / 1e9, **extra)
    if anatomy:
        step_rows(res, case, name, model, batch, step, **extra)
    if infer:
        for p in model.parameters():
            p.grad = None
        model.eval()
        fwd = encoder_fn(model, batch)
        fwd()
        ms = bench_ms(fwd, warmup=100, rep=600)
        res.add(infer_case, name, "ms", ms, **extra)
        res.add(infer_case, name, "tokens/s", real / ms * 1e3, **extra)


def step_rows(res, case, name, model, batch, step, **extra):
    """The MLM step's GPU-side and host-side rows (``kernel_profile``, ``step_anatomy``) for one contender; a failure
    is reported and leaves the other rows alone."""
    try:
        prof = kernel_profile(step)
        for metric in ("kernel ms", "busy ms", "launches", "aten launches", "triton launches", "syncs"):
            res.add(case, name, metric, prof[metric], **extra)
        for metric, value in step_anatomy(model, batch).items():
            res.add(case, name, metric, value, **extra)
    except Exception as e:  # informative rows only
        print(f"{name}: step profile failed: {type(e).__name__}: {e}", flush=True)


def encoder_fn(model, batch):
    """The bare encoder of each model (no MLM head), as a fill-mask/embedding user runs it: eval, no grad."""
    encoder = getattr(model, "bert", None) or model.model
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    @torch.no_grad()
    def forward():
        return encoder(**inputs)
    return forward


def bench_models(res, lengths, batch):
    real = int(lengths.sum())
    case = f"mlm step B{B} S{S} len{LO}-{HI} bf16"
    infer_case = f"infer encoder B{B} S{S} len{LO}-{HI} bf16"
    print(f"real tokens {real} of {B * S} ({100 * (1 - real / (B * S)):.0f}% padding)")
    # hfzoo_modules (layers module by module) and hfzoo_resln (residual-LayerNorm kernels) measure two options of hfzoo
    names = ["hfzoo", "hfzoo_modules", "hfzoo_resln", "hfzoo_ffn2048", "hf_bert", "modernbert", "modernbert_sparse"]
    if importlib.util.find_spec("flash_attn") is not None:
        names.append("modernbert_fa2")
    else:
        print("flash_attn is not installed: no unpadded ModernBERT (flash_attention_2) contender")
    for name in names:
        torch.manual_seed(0)
        try:
            model = build(name)
        except Exception as e:  # report and go on with the others
            print(f"{name}: could not be built: {type(e).__name__}: {e}")
            continue
        step = step_fn(model, batch)
        res.add(f"coldstart {case}", name, "s", first_call_s(step))
        print(f"{name}: loss {model(**batch).loss.item():.4f}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        time_contender(res, name, model, batch, step, real, case, infer_case,
                       anatomy=name in ("hfzoo", "hf_bert", "hfzoo_resln"),
                       infer=name != "modernbert_sparse")   # modernbert_sparse: same encoder as modernbert
        del model, step
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def attention_inputs(lengths):
    g = torch.Generator(device=DEV).manual_seed(1)
    total = int(lengths.sum())
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(DEV, torch.int32)
    qkv = torch.randn(total, 3, H, D, device=DEV, dtype=DT, generator=g).requires_grad_()
    slopes = torch.tensor(alibi_slopes(H), device=DEV)
    return total, cu, qkv, slopes


def padded_bias(lengths, slopes):
    pos = torch.arange(S, device=DEV)
    alibi = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()  # [H, S, S]
    keymask = torch.arange(S, device=DEV)[None, :] < lengths.to(DEV)[:, None]  # [B, S]
    bias = alibi[None] + torch.where(keymask, 0.0, float("-inf"))[:, None, None, :]
    return bias.to(DT)  # [B, H, S, S]


def pad_qkv(qkv, lengths):
    mask = torch.arange(S, device=DEV)[None, :] < lengths.to(DEV)[:, None]
    out = qkv.new_zeros(B, S, 3, H, D)
    out[mask] = qkv.detach()
    return [t.transpose(1, 2).contiguous().requires_grad_() for t in out.unbind(2)]  # 3 x [B, H, S, D]


def graphed(fn):
    """``fn`` captured once into a CUDA graph (after warm-up calls that compile and autotune); returns its replay."""
    from hfzoo.ops.validate import trusted

    with trusted():  # no host read of cu_seqlens inside the capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    return graph.replay


def bench_graphed(res, total, cu, qkv, slopes, do, case):
    """hfzoo's fwd+bwd replayed from a CUDA graph: the kernels' device time without the host's launch cost
    (informative, contender ``hfzoo_cudagraph``; the op is timed as a user calls it in ``bench_attention``).
    Last in the run: a failed capture must not disturb the other measurements."""
    hz = lambda: torch.autograd.grad(varlen_alibi_attention_qkvpacked(qkv, cu, HI, slopes), qkv, do)
    res.add(case.replace("attention", "fwdbwd attention"), "hfzoo_cudagraph", "ms", bench_ms(graphed(hz), 100, 500))


def bench_attention(res, lengths):
    total, cu, qkv, slopes = attention_inputs(lengths)
    do = torch.randn(total, H, D, device=DEV, dtype=DT)
    case = f"attention B{B} S{S} len{LO}-{HI} H{H} D{D} bf16"
    hz = lambda: varlen_alibi_attention_qkvpacked(qkv, cu, HI, slopes)
    res.add(f"coldstart fwd {case}", "hfzoo", "s", first_call_s(hz))
    res.add(case.replace("attention", "fwd attention"), "hfzoo", "ms", bench_ms(hz, 100, 500))
    res.add(case.replace("attention", "fwdbwd attention"), "hfzoo", "ms",
            bench_ms(lambda: torch.autograd.grad(hz(), qkv, do), 100, 500))

    bias = padded_bias(lengths, slopes)
    q, k, v = pad_qkv(qkv, lengths)
    dop = torch.randn_like(q)
    sd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    res.add(case.replace("attention", "fwd attention"), "sdpa_bias", "ms", bench_ms(sd, 100, 500))
    res.add(case.replace("attention", "fwdbwd attention"), "sdpa_bias", "ms",
            bench_ms(lambda: torch.autograd.grad(sd(), (q, k, v), dop), 100, 500))
    res.add(f"bias memory {case}", "sdpa_bias", "GB", bias.numel() * bias.element_size() / 1e9)

    # A new length bucket (longest 1024): Triton re-tunes (no recompile); time the first call.
    long_lengths = lengths.clone()
    long_lengths[0] = 1024
    total2, cu2, qkv2, _ = attention_inputs(long_lengths)
    res.add(f"coldstart fwdbwd new bucket max1024 {case}", "hfzoo", "s",
            first_call_s(lambda: varlen_alibi_attention_qkvpacked(qkv2, cu2, 1024, slopes).sum().backward()))
    return total, cu, qkv, slopes, do, case


def bench_flex(res, lengths, total, cu, qkv, slopes, do, case):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    tp = (total + 127) // 128 * 128
    seg = torch.repeat_interleave(torch.arange(B, device=DEV), lengths.to(DEV))
    doc = torch.full((tp,), -1, device=DEV, dtype=torch.long)
    doc[:total] = seg
    pos = torch.zeros(tp, device=DEV, dtype=torch.long)
    pos[:total] = torch.arange(total, device=DEV) - cu.long()[seg]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (pos[q_idx] - pos[kv_idx]).abs()

    def mask_mod(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    flex = torch.compile(flex_attention)
    qf = torch.zeros(3, 1, H, tp, D, device=DEV, dtype=DT)
    qf[:, 0, :, :total] = qkv.detach().permute(1, 2, 0, 3)
    q, k, v = (t.clone().requires_grad_() for t in qf.unbind(0))
    dof = torch.zeros(1, H, tp, D, device=DEV, dtype=DT)
    dof[0, :, :total] = do.transpose(0, 1)
    t0 = time.perf_counter()
    bm = create_block_mask(mask_mod, None, None, tp, tp, device=DEV)
    fb = lambda: torch.autograd.grad(flex(q, k, v, score_mod=score_mod, block_mask=bm), (q, k, v), dof)
    fb()
    torch.cuda.synchronize()
    res.add(f"coldstart fwdbwd {case}", "flex_attention", "s", time.perf_counter() - t0)
    res.add(f"block mask {case}", "flex_attention", "ms",
            bench_ms(lambda: create_block_mask(mask_mod, None, None, tp, tp, device=DEV), 10, 100))
    res.add(case.replace("attention", "fwd attention"), "flex_attention", "ms",
            bench_ms(lambda: flex(q, k, v, score_mod=score_mod, block_mask=bm), 100, 500))
    res.add(case.replace("attention", "fwdbwd attention"), "flex_attention", "ms", bench_ms(fb, 100, 500))
    # agreement with hfzoo on the real tokens
    out = flex(q, k, v, score_mod=score_mod, block_mask=bm)[0, :, :total].transpose(0, 1).float()
    ref = varlen_alibi_attention_qkvpacked(qkv.detach(), cu, HI, slopes).float()
    print(f"flex_attention vs hfzoo relative RMS difference: {((out - ref).norm() / ref.norm()).item():.2e}")


def profile(out_dir: Path, steps: int = 5, names=("hfzoo", "hfzoo_modules", "hf_bert"), sweep: bool = True):
    """Top 25 CUDA kernels of the MLM step for ``names`` (torch.profiler), the step's wall time against its summed
    kernel time and GPU busy time (a step far longer than its kernels is launch/host bound), launches and host
    waits per step, and (``sweep``) the attention backward's time under each of its launch configs."""
    from hfzoo.ops.launch import DEFAULTS, tuning

    lengths, batch = make_batch()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in names:
        torch.manual_seed(0)
        model = build(name)
        step = step_fn(model, batch)
        prof = kernel_profile(step, steps, table=True)
        wall = seconds_per_step(step, n=20, warmup=3) * 1e3
        text = (f"== {name}: step wall {wall:.2f} ms, summed kernel time {prof['kernel ms']:.2f} ms/step, GPU busy "
                f"{prof['busy ms']:.2f} ms/step, {prof['launches']:.0f} GPU ops/step ({prof['aten launches']:.0f} "
                f"aten + {prof['triton launches']:.0f} Triton launches), {prof['syncs']:.1f} host syncs/step\n"
                f"{prof['table']}")
        print(text, flush=True)
        report.append(text)
        del model, step
        torch.cuda.empty_cache()
    (out_dir / "profile_mosaicbert.txt").write_text("\n".join(report))
    if not sweep:
        return

    # the attention backward under each launch config (autotuning picks among these)
    total, cu, qkv, slopes = attention_inputs(lengths)
    do = torch.randn(total, H, D, device=DEV, dtype=DT)
    candidates = DEFAULTS["varlen_alibi.bwd"]["configs"] + [  # the tuned list, then a few others to learn from
        {"BLOCK": 64, "STEP": 32, "SPLIT": True, "num_warps": 4, "num_stages": 3},
        {"BLOCK": 128, "STEP": 32, "SPLIT": True, "num_warps": 4, "num_stages": 5},
        {"BLOCK": 128, "STEP": 64, "SPLIT": True, "num_warps": 8, "num_stages": 2}]
    for i, conf in enumerate(candidates):
        with tuning({"varlen_alibi.bwd": {"configs": [conf]}}):
            fb = lambda: torch.autograd.grad(varlen_alibi_attention_qkvpacked(qkv, cu, HI, slopes), qkv, do)
            try:
                ms = bench_ms(fb, 50, 300)
                print(f"attention fwdbwd with bwd config {i} {conf}: {ms:.4f} ms", flush=True)
            except Exception as e:
                print(f"attention bwd config {i} {conf} failed: {type(e).__name__}: {e}", flush=True)


def inventory(device: str = "cpu", layers: int = LAYERS, repeats: int = 30):
    """Host-side inventory of one MLM step, module path against fused layers: aten ops that reach a kernel (views and
    allocations left out), Triton launches, autograd nodes, host reads of device values, per step and per layer;
    then host time per step and per op with the Triton kernels stubbed out (``launch`` returns at once: on a CPU
    that times the Python, dispatch and autograd work around the kernels, on a small config so the aten ops cost
    little). Runs on the CPU (under ``TRITON_INTERPRET=1``, backend forced to ``triton``) or on CUDA."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import hfzoo.ops.launch as launch_mod
    from hfzoo.ops.dispatch import use_backend
    from hfzoo.ops.launch import count_launches

    free = {"empty", "empty_strided", "detach", "lift_fresh", "_to_copy_noop", "alias", "_local_scalar_dense_noop"}
    syncing = {"nonzero", "_local_scalar_dense", "item"}

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.reads = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split("::")[-1]
            out = func(*args, **(kwargs or {}))
            if func.is_view or name in free:
                return out
            self.ops[name] += 1
            if name in syncing or (name in ("_to_copy", "copy_") and device != "cpu" and any(
                    isinstance(a, torch.device) and a.type == "cpu" for a in list(args) + list((kwargs or {}).values()))):
                self.reads[name] += 1
            return out

    def nodes(loss):
        seen, todo, kinds = set(), [loss.grad_fn], collections.Counter()
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            kinds[type(fn).__name__] += 1
            todo.extend(f for f, _ in fn.next_functions)
        return kinds

    g = torch.Generator().manual_seed(0)
    Bi, Si = 4, 32
    lengths = torch.randint(8, Si + 1, (Bi,), generator=g)
    mask = (torch.arange(Si)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 100, (Bi, Si), generator=g) * mask
    labels = torch.where((torch.rand(Bi, Si, generator=g) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    cfg = MosaicBertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=64)
    report = {}
    if device == "cpu":
        torch.set_num_threads(1)     # tiny ops: thread hand-offs would dominate (and vary with the machine's load)
    stub = launch_mod.launch

    def stubbed(name, *args, **kwargs):
        launch_mod.note_launch(name)

    def stubbed_zero(name, kernel, grid, *args, **kwargs):   # CPU timings: outputs hold zeros, not slow garbage
        launch_mod.note_launch(name)
        with torch.no_grad():
            for a in args:
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    a.data.zero_()   # .data: no version-counter bump (timing only)
    for fused in (False, True):
        torch.manual_seed(0)
        model = MosaicBertForMaskedLM(cfg).to(device).train()
        model.bert.encoder.fused_layers = fused
        label = "fused" if fused else "modules"
        params = [p for p in model.parameters()]
        with use_backend("triton"):
            model(**batch).loss.backward()                       # compile / first-call work
            for mod in ("hfzoo.ops.varlen_alibi_attention", "hfzoo.ops.geglu", "hfzoo.ops.softmax_cross_entropy"):
                sys.modules[mod].launch = stubbed
            times = []
            try:
                for p in params:
                    p.grad = None
                fwd_ops, bwd_ops = Ops(), Ops()
                with count_launches() as tf, fwd_ops:
                    loss = model(**batch).loss
                graph = nodes(loss)
                with count_launches() as tb, bwd_ops:
                    loss.backward()
                for mod in ("hfzoo.ops.varlen_alibi_attention", "hfzoo.ops.geglu", "hfzoo.ops.softmax_cross_entropy"):
                    sys.modules[mod].launch = stubbed_zero if device == "cpu" else stubbed
                for i in range(repeats + 5):
                    for p in params:
                        p.grad = None
                    t0 = time.perf_counter()
                    loss = model(**batch).loss
                    t1 = time.perf_counter()
                    loss.backward()
                    t2 = time.perf_counter()
                    if i >= 5:
                        times.append((t1 - t0, t2 - t1))
            finally:
                for mod in ("hfzoo.ops.varlen_alibi_attention", "hfzoo.ops.geglu", "hfzoo.ops.softmax_cross_entropy"):
                    sys.modules[mod].launch = stub
        times.sort(key=sum)
        fwd_s, bwd_s = times[len(times) // 2]
        report[label] = {
            "forward aten ops": sum(fwd_ops.ops.values()), "backward aten ops": sum(bwd_ops.ops.values()),
            "forward triton launches": tf.total(), "backward triton launches": tb.total(),
            "autograd nodes": sum(graph.values()), "nodes w/o AccumulateGrad": sum(
                v for k, v in graph.items() if k != "AccumulateGrad"),
            "host reads (fwd)": dict(fwd_ops.reads), "host fwd ms (kernels stubbed)": fwd_s * 1e3,
            "host bwd ms (kernels stubbed)": bwd_s * 1e3,
            "forward ops": dict(fwd_ops.ops.most_common()), "backward ops": dict(bwd_ops.ops.most_common()),
            "graph": dict(graph.most_common())}
    for label, r in report.items():
        print(f"== {label} ({layers} layers, {device})")
        for k, v in r.items():
            print(f"  {k}: {v}")
    return report


def rounds(n_rounds: int, names: list[str]):
    """The MLM step (and encoder inference) of ``names``, interleaved in one process for ``n_rounds`` rounds: each
    round builds every contender afresh and times it; rows carry ``round``. ``mosaicbert_rounds.json``."""
    res = Results("mosaicbert_rounds")
    lengths, batch = make_batch()
    real = int(lengths.sum())
    case = f"mlm step B{B} S{S} len{LO}-{HI} bf16"
    infer_case = f"infer encoder B{B} S{S} len{LO}-{HI} bf16"
    for r in range(1, n_rounds + 1):
        for name in names:
            torch.manual_seed(0)
            model = build(name)
            step = step_fn(model, batch)
            if r == 1:
                res.add(f"coldstart {case}", name, "s", first_call_s(step), round=r)
            torch.cuda.reset_peak_memory_stats()
            time_contender(res, name, model, batch, step, real, case, infer_case,
                           anatomy=r == 1 or os.environ.get("HFZOO_BENCH_ROUND_PROFILES") == "all", round=r)
            del model, step
            gc.collect()
            torch.cuda.empty_cache()
        res.save(plot_metric=None)
    print(res.save(plot_metric=None))


def main():
    gc.collect()
    if sys.argv[1:2] == ["profile"]:   # `profile [nosweep] [contender ...]`
        names = [a for a in sys.argv[2:] if a != "nosweep"] or ["hfzoo", "hfzoo_modules", "hf_bert"]
        profile(Path(os.environ.get("HFZOO_BENCH_OUT", "benchmarks/results")), names=names,
                sweep="nosweep" not in sys.argv)
        return
    if sys.argv[1:2] == ["inventory"]:   # CPU or GPU: `inventory [cpu|cuda] [layers]`
        inventory(*(sys.argv[2:3] or ["cuda" if torch.cuda.is_available() else "cpu"]),
                  *[int(a) for a in sys.argv[3:4]])
        return
    if sys.argv[1:2] == ["rounds"]:
        rounds(int(sys.argv[2]), sys.argv[3:] or ["hfzoo", "hf_bert"])
        return
    res = Results("mosaicbert")
    lengths, batch = make_batch()
    bench_models(res, lengths, batch)
    res.save(plot_metric="tokens/s")
    gc.collect()  # the model contenders' garbage is not collected inside the attention timings
    args = bench_attention(res, lengths)
    res.save(plot_metric="tokens/s")
    if os.environ.get("HFZOO_BENCH_FLEX", "1") == "1":
        try:
            bench_flex(res, lengths, *args)
        except Exception as e:  # report, keep the rest
            print(f"flex_attention failed: {type(e).__name__}: {e}")
    res.save(plot_metric="tokens/s")
    try:
        bench_graphed(res, *args)
    except Exception as e:  # report, keep the rest
        print(f"hfzoo_cudagraph failed: {type(e).__name__}: {e}")
    print(res.save(plot_metric="tokens/s"))


if __name__ == "__main__":
    main()
