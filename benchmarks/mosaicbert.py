"""MosaicBERT vs HF BERT and ModernBERT: a BERT-base MLM training step on a half-padded batch. GPU only.

    PYTHONPATH=. HFZOO_BENCH_OUT=out python benchmarks/mosaicbert.py          # the results JSON
    PYTHONPATH=. HFZOO_BENCH_OUT=out python benchmarks/mosaicbert.py profile  # top CUDA kernels + bwd configs

Workload (as in ARCHITECTURE.md): bf16 weights, batch 32 x 512 with lengths uniform in 64..512 (about 45%
padding), 30% of the real tokens masked; one step = forward + loss + backward (no optimizer).
Throughput counts real (non-padding) tokens. Inference: the encoder alone (no head), eval mode, no grad, the same
batch (case ``infer encoder ...``, real tokens/s). Then the attention alone: hfzoo's varlen ALiBi kernel vs
SDPA over the padded batch with a materialized ALiBi + padding bias, and (last, because it compiles)
PyTorch FlexAttention with an ALiBi score_mod and a document block mask over the same packed tokens.
"""

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
        # "hfzoo": mosaic-bert-base sizes (GeGLU with 3072 per half); "hfzoo_ffn2048": BERT-base's parameter count
        cfg = MosaicBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=H,
                               intermediate_size=2048 if name == "hfzoo_ffn2048" else 3072)
        model = MosaicBertForMaskedLM(cfg)
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
    names = ["hfzoo", "hfzoo_ffn2048", "hf_bert", "modernbert", "modernbert_sparse"]
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
        ms = bench_ms(step, warmup=200, rep=1500)
        res.add(case, name, "ms", ms)
        res.add(case, name, "tokens/s", real / ms * 1e3)
        res.add(case, name, "GB", torch.cuda.max_memory_allocated() / 1e9)
        if name != "modernbert_sparse":  # same encoder as modernbert
            for p in model.parameters():
                p.grad = None
            model.eval()
            fwd = encoder_fn(model, batch)
            fwd()
            ms = bench_ms(fwd, warmup=100, rep=600)
            res.add(infer_case, name, "ms", ms)
            res.add(infer_case, name, "tokens/s", real / ms * 1e3)
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


def profile(out_dir: Path, steps: int = 5):
    """Top 25 CUDA kernels of the MLM step for hfzoo and hf_bert (torch.profiler), the step's wall time against
    its summed kernel time (a step far longer than its kernels is launch/host bound), and the attention
    backward's time under each of its launch configs."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from hfzoo.ops.launch import DEFAULTS, tuning

    lengths, batch = make_batch()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in ("hfzoo", "hf_bert"):
        torch.manual_seed(0)
        model = build(name)
        step = step_fn(model, batch)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        wall = seconds_per_step(step, n=steps, warmup=0) * 1e3
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / steps / 1e3  # kernels only: no double count
        n_kernels = sum(e.count for e in kernels)
        table = events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
        text = (f"== {name}: step wall {wall:.2f} ms, summed device time {kernel_ms:.2f} ms/step, "
                f"{n_kernels / steps:.0f} kernel launches/step\n{table}")
        print(text, flush=True)
        report.append(text)
        del model, step
        torch.cuda.empty_cache()
    (out_dir / "profile_mosaicbert.txt").write_text("\n".join(report))

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


def main():
    gc.collect()
    if sys.argv[1:] == ["profile"]:
        profile(Path(os.environ.get("HFZOO_BENCH_OUT", "benchmarks/results")))
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
