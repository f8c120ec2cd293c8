"""SimVQ model: quantizer math, encode/decode consistency, 1D form, Auto classes, processor."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from hfzoo.models.simvq import ARCHITECTURE, SimVQConfig, SimVQImageProcessor, SimVQModel, SimVQQuantizer
from hfzoo.models.simvq.modeling_simvq import codebook_utilization, depth_to_space
from hfzoo.ops.dispatch import use_backend


@pytest.fixture(autouse=True)
def _reference_search():
    """Model tests run the nearest-code search in PyTorch (the kernel has its own tests; on CPU it would run
    through Triton's slow interpreter). test_model_through_the_kernel covers the kernel path end to end."""
    with use_backend("reference"):
        yield


def _model(**overrides):
    torch.manual_seed(0)
    cfg = ARCHITECTURE.tiny_config()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return SimVQModel(cfg)


def test_quantizer_matches_the_papers_definition():
    torch.manual_seed(0)
    q = SimVQQuantizer(50, 8, beta=0.25)
    assert not q.embedding.weight.requires_grad and q.embedding_proj.weight.requires_grad
    assert q.embedding_proj.bias is not None
    z = torch.randn(2, 8, 3, 5, requires_grad=True)
    z_q, idx, loss = q(z)
    cb = q.embedding_proj.weight @ q.embedding.weight.t()  # W C^T + b, per code
    cb = (cb + q.embedding_proj.bias[:, None]).t()
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    want = torch.cdist(flat.double(), cb.detach().double()).argmin(1).reshape(2, 3, 5)
    assert torch.equal(idx, want)
    codes = cb[idx].permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, codes, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, 1.25 * F.mse_loss(z.detach(), codes.detach()), rtol=1e-5, atol=1e-7)
    # straight-through: d z_q / d z is the identity; the codebook term trains W (and only W)
    (z_q.sum() + loss).backward()
    assert q.embedding.weight.grad is None and q.embedding_proj.weight.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, torch.ones_like(z) + 0.25 * 2 * (z - codes).detach() / z.numel())


def test_legacy_loss_swaps_the_weights():
    torch.manual_seed(0)
    q = SimVQQuantizer(16, 4, beta=0.25, legacy=True)
    z = torch.randn(1, 4, 6, requires_grad=True)  # 1D: [B, D, T]
    z_q, idx, loss = q(z)
    assert idx.shape == (1, 6) and z_q.shape == z.shape
    (gz,) = torch.autograd.grad(loss, z)
    codes = q.lookup(idx).detach()
    torch.testing.assert_close(gz, 2 * (z - codes).detach() / z.numel())  # commitment weight 1 in legacy mode


def test_initial_codebook_scale_and_frozen_c_survive_training_step():
    model = _model(codebook_size=4096, z_channels=64)
    c = model.quantize.embedding.weight
    assert abs(c.std().item() - 64 ** -0.5) < 0.05 * 64 ** -0.5 and abs(c.mean().item()) < 0.01
    before = c.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    model(pixel_values=x).loss.backward()
    opt.step()
    assert torch.equal(model.quantize.embedding.weight, before)


def test_decode_of_encode_equals_forward_and_uses_projected_codebook():
    model = _model().eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=x, return_loss=True)
        idx = model.encode(x)
        rec = model.decode(idx)
        # the reference's get_codebook_entry reads the unprojected C: a different (wrong) reconstruction
        unprojected = model.decoder(model.quantize.embedding(idx).permute(0, 3, 1, 2))
    assert idx.shape == (3, 8, 8) and idx.dtype == torch.int64
    assert torch.equal(rec, out.reconstruction) and torch.equal(idx, out.indices)
    assert (unprojected - rec).abs().max() > 1e-2
    assert out.reconstruction.shape == x.shape
    torch.testing.assert_close(out.loss, out.reconstruction_loss + out.quantizer_loss)
    assert out.codebook_utilization.item() == codebook_utilization(idx, 64) == idx.unique().numel() / 64


def test_model_through_the_kernel():
    model = _model().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad(), use_backend("triton"):
        out = model(pixel_values=x)
    with torch.no_grad():
        ref = model(pixel_values=x)
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.reconstruction, ref.reconstruction)


def test_decoder_upsampling_uses_depth_to_space_dcr_order():
    x = torch.arange(2 * 8 * 2 * 3, dtype=torch.float32).reshape(2, 8, 2, 3)
    y = depth_to_space(x, 2, dims=2)
    assert y.shape == (2, 2, 4, 6)
    # output pixel (c, 2h + i, 2w + j) comes from input channel (i * 2 + j) * C_out + c
    for c_out in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[:, c_out, i::2, j::2], x[:, (i * 2 + j) * 2 + c_out])
    x1 = torch.arange(12.0).reshape(1, 4, 3)
    y1 = depth_to_space(x1, 2, dims=1)
    assert torch.equal(y1[:, :, 1::2], x1[:, 2:4])


def test_one_dimensional_form():
    torch.manual_seed(0)
    cfg = SimVQConfig(spatial_dims=1, in_channels=5, out_channels=5, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1,
                      z_channels=8, codebook_size=32, norm_num_groups=8)
    model = SimVQModel(cfg).eval()
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        out = model(input_values=x)
        assert out.reconstruction.shape == x.shape and out.indices.shape == (2, 6)
        assert torch.equal(model.decode(model.encode(x)), out.reconstruction)
    assert isinstance(model.encoder.conv_in, torch.nn.Conv1d)
    with pytest.raises(ValueError, match="divisible"):
        model(input_values=torch.randn(2, 5, 22))


def test_training_reduces_loss_and_gradients_reach_all_trainable_parameters():
    model = _model()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        out = model(pixel_values=x)
        opt.zero_grad()
        out.loss.backward()
        if first is None:
            first = out.loss.item()
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
        opt.step()
    assert out.loss.item() < 0.7 * first


def test_auto_classes_and_save_load_roundtrip(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path)
    proc = SimVQImageProcessor(size=16)
    proc.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hfzoo_simvq"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is SimVQModel
    assert torch.equal(loaded.quantize.embedding.weight, model.quantize.embedding.weight)
    proc2 = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(proc2) is SimVQImageProcessor and proc2.size == 16
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    pv = proc2(img)["pixel_values"]
    assert pv.shape == (1, 3, 16, 16) and pv.min() >= -1 and pv.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pv).reconstruction, model(pixel_values=pv).reconstruction)


def test_processor_round_trip_of_values():
    proc = SimVQImageProcessor(size=8, crop=False)
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pv = proc([img, img])["pixel_values"]
    assert pv.shape == (2, 3, 8, 8)
    back = proc.postprocess(pv)
    assert np.array_equal(back[0], img)  # same size: no resampling, exact [-1, 1] <-> uint8 round trip


def test_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        model(pixel_values=torch.randn(2, 3, 15, 16))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 2, 2), 64))
    with pytest.raises(TypeError, match="integer"):
        model.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="norm_num_groups"):
        SimVQConfig(ch=20, norm_num_groups=32)
    with pytest.raises(ValueError, match="spatial_dims"):
        SimVQConfig(spatial_dims=3)


@pytest.mark.gpu
def test_gpu_model_triton_path_matches_reference_path():
    model = _model(codebook_size=1024).cuda().eval()
    x = torch.rand(4, 3, 32, 32, device="cuda") * 2 - 1
    with torch.no_grad(), use_backend("auto"):
        out = model(pixel_values=x)
        with use_backend("reference"):
            ref = model(pixel_values=x)
    assert (out.indices == ref.indices).float().mean() > 0.99


def test_bf16_model_takes_the_processors_fp32_pixels(tmp_path):
    """A bf16 SimVQ gets fp32 pixel_values from its processor and casts them (no dtype mismatch error)."""
    model = _model().eval()
    model.save_pretrained(tmp_path)
    low = SimVQModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    image = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    pixels = SimVQImageProcessor(size=16)(image)["pixel_values"]
    assert pixels.dtype == torch.float32
    with torch.no_grad():
        out = low(pixel_values=pixels, return_loss=True)
        ref = model(pixel_values=pixels, return_loss=True)
        tokens = low.encode(pixels)
    assert out.reconstruction.dtype == torch.bfloat16 and out.quantized.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert tokens.shape == ref.indices.shape
    assert (tokens == ref.indices).float().mean() > 0.8   # bf16 may pick a neighbouring code here and there


def test_image_feature_extraction_pipeline_returns_the_quantized_features():
    from PIL import Image
    from transformers import pipeline

    model = _model().eval()
    processor = SimVQImageProcessor(size=16)
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor, device="cpu")
    image = Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8))
    features = extractor(image, return_tensors=True)
    with torch.no_grad():
        expected = model(**processor(image)).quantized
    assert features.shape == expected.shape == (1, model.config.z_channels, 8, 8)
    torch.testing.assert_close(features, expected)
    with torch.no_grad():
        assert model(**processor(image)).loss is None               # no loss in eval unless asked for
        assert model(**processor(image), return_loss=True).loss.dim() == 0


def test_shipped_checkpoint_reproduces_its_recorded_heldout_mse():
    """The tiny SimVQ (trained before the layers tier existed) reconstructs its held-out photo with the mean
    squared error its training run recorded (same crops as scripts/train_tiny_simvq.py)."""
    import json
    import sys
    from pathlib import Path

    import hfzoo

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        from simvq_data import EVAL_PHOTOS, grid_crops
    finally:
        sys.path.pop(0)
    folder = hfzoo.checkpoint_path("tiny-simvq")
    recorded = json.loads((folder / "training.json").read_text())
    assert list(EVAL_PHOTOS) == recorded["eval_photos"]
    held_out = grid_crops(EVAL_PHOTOS, 32, 16)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        rec = torch.cat([model(pixel_values=held_out[i:i + 256]).reconstruction for i in range(0, len(held_out), 256)])
    mse = F.mse_loss(rec.clamp(-1, 1), held_out).item()
    assert mse == pytest.approx(recorded["held_out_mse"], abs=2e-5)


@pytest.mark.parametrize("legacy", [False, True])
def test_quantizer_fast_step_equals_the_written_out_autograd(legacy):
    # the custom backward (picked codes' gradient straight to W, one node for both losses and the straight-through
    # estimator) against plain autograd through F.embedding of the whole projected codebook
    torch.manual_seed(1)
    q = SimVQQuantizer(70, 12, beta=0.3, legacy=legacy)
    z = torch.randn(3, 12, 4, 5, requires_grad=True)
    g = torch.randn(3, 12, 4, 5)
    z_q, idx, loss = q(z)
    ((z_q * g).sum() + 3.0 * loss).backward()
    fast = (z.grad.clone(), q.embedding_proj.weight.grad.clone(), q.embedding_proj.bias.grad.clone())
    z.grad = None
    q.zero_grad()
    zt = z.movedim(1, -1)
    zq = F.embedding(idx, q.codebook())
    w_z, w_q = (1.0, 0.3) if legacy else (0.3, 1.0)
    ref_loss = w_z * F.mse_loss(zt, zq.detach()) + w_q * F.mse_loss(zq, zt.detach())
    out = (zt + (zq - zt).detach()).movedim(-1, 1)
    ((out * g).sum() + 3.0 * ref_loss).backward()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(z_q, zq.detach().movedim(-1, 1))
    for got, want in zip(fast, (z.grad, q.embedding_proj.weight.grad, q.embedding_proj.bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_quantizer_with_unfrozen_codes_trains_them_too():
    torch.manual_seed(2)
    q = SimVQQuantizer(30, 8)
    q.embedding.weight.requires_grad_(True)
    z = torch.randn(2, 8, 3, requires_grad=True)
    z_q, idx, loss = q(z)
    (z_q.sum() + loss).backward()
    assert q.embedding.weight.grad is not None and q.embedding.weight.grad.abs().sum() > 0


@pytest.mark.gpu
def test_gpu_quantizer_step_has_no_host_sync():
    torch.manual_seed(0)
    q = SimVQQuantizer(4096, 64).cuda()
    z = torch.randn(8, 64, 16, 16, device="cuda", requires_grad=True)
    with use_backend("auto"):
        for _ in range(2):  # compile and autotune first (autotuning synchronizes)
            z_q, idx, loss = q(z)
            (z_q.square().mean() + loss).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            z_q, idx, loss = q(z)
            (z_q.square().mean() + loss).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    ref = nearest_code_exact_reference(z.detach().movedim(1, -1), q.codebook().detach())
    assert torch.equal(idx, ref)


def nearest_code_exact_reference(z, codebook):
    from hfzoo.ops.nearest_code import nearest_code

    return nearest_code(z, codebook, precision="exact", backend="reference")
