"""The shared building blocks in hfzoo/layers, on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from transformers import PreTrainedConfig

from hfzoo.layers.image_inputs import to_pil_image
from hfzoo.layers.losses import causal_lm_loss, classification_loss, cross_entropy
from hfzoo.layers.packing import Packing
from hfzoo.layers.recurrent_cache import RecurrentCache, RecurrentLayerState, pick_cache
from hfzoo.layers.rotary import apply_rotary, rope_inv_freq
from hfzoo.layers.short_conv import ShortConvolution
from hfzoo.layers.vision import PatchEmbedding, patchify, resize_position_grid, unpatchify

# ---------------------------------------------------------------------------------------------------------------
# Packing


def test_packing_from_mask_packs_and_unpacks_the_real_tokens():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    p = Packing.from_mask(mask)
    assert p.cu_seqlens.tolist() == [0, 3, 5, 5] and p.cu_seqlens.dtype == torch.int32
    assert p.max_seqlen == 3 and p.num_tokens == 5
    x = torch.arange(12.0).view(3, 4, 1)
    packed = p.pack(x)
    assert packed[:, 0].tolist() == [1, 2, 3, 4, 5]
    back = p.unpack(packed)
    assert torch.equal(back, x * mask[..., None])
    assert p.document_ids().tolist() == [[-1, 0, 0, 0], [1, 1, -1, -1], [-1, -1, -1, -1]]
    assert p.positions().tolist() == [[0, 0, 1, 2], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_packing_from_position_ids_finds_every_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert Packing.position_ids_are_packed(pos)
    assert not Packing.position_ids_are_packed(torch.arange(9)[None])
    p = Packing.from_position_ids(pos)
    assert p.cu_seqlens.tolist() == [0, 3, 5, 9] and p.max_seqlen == 4
    assert p.document_ids().tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    assert torch.equal(p.positions(), pos)
    two_rows = Packing.from_position_ids(torch.tensor([[0, 1, 0], [0, 1, 2]]))   # each row starts a document
    assert two_rows.cu_seqlens.tolist() == [0, 2, 3, 6]


def test_packing_from_cu_seqlens_checks_its_argument():
    assert Packing.from_cu_seqlens(torch.tensor([0, 2, 6]), 1, 6).lengths.tolist() == [2, 4]
    for bad in (torch.tensor([1, 6]), torch.tensor([0, 5]), torch.tensor([0, 4, 2, 6]), torch.tensor([0.0, 6.0])):
        with pytest.raises(ValueError, match="cu_seqlens"):
            Packing.from_cu_seqlens(bad, 1, 6)


# ---------------------------------------------------------------------------------------------------------------
# Short convolution


def test_short_convolution_of_packed_documents_equals_each_document_alone():
    torch.manual_seed(0)
    conv = ShortConvolution(6, 4, bias=True)
    docs = [torch.randn(1, n, 6) for n in (5, 2, 7)]
    alone = torch.cat([conv(d)[0] for d in docs], dim=1)
    packing = Packing.from_cu_seqlens(torch.tensor([0, 5, 7, 14]), 1, 14)
    packed, state = conv(torch.cat(docs, dim=1), document_ids=packing.document_ids())
    assert state is None
    assert rel_err(packed, alone) < 1e-6
    unpacked, _ = conv(torch.cat(docs, dim=1))
    assert rel_err(unpacked, alone) > 1e-2       # without document ids the window crosses documents


def test_short_convolution_state_continues_a_sequence():
    torch.manual_seed(0)
    conv = ShortConvolution(3, 3)
    x = torch.randn(2, 9, 3)
    full, _ = conv(x)
    first, state = conv(x[:, :4])
    rest, _ = conv(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), full)


# ---------------------------------------------------------------------------------------------------------------
# Recurrent cache


def test_recurrent_cache_holds_several_memories_per_layer():
    """A MoM-style layer keeps a tuple of memories (some not yet written); batch operations reach all of them."""
    cache = RecurrentCache(num_layers=3, attention_layers=[1])
    assert isinstance(cache.layers[0], RecurrentLayerState) and not isinstance(cache.layers[1], RecurrentLayerState)
    mem = [torch.arange(2.0).view(2, 1, 1) + i for i in range(3)]
    cache.layers[0].recurrent_state = (mem[0], None, mem[2])
    cache.layers[0].conv_state = {"q": torch.arange(2.0).view(2, 1, 1)}
    cache.layers[2].recurrent_state = mem[1]
    cache.advance(5)
    assert cache.get_seq_length() == 5 and cache.has_previous_state()
    cache.layers[0].reorder_cache(torch.tensor([1, 0]))
    state = cache.layers[0].recurrent_state
    assert state[1] is None and state[0].flatten().tolist() == [1, 0] and state[2].flatten().tolist() == [3, 2]
    assert cache.layers[0].conv_state["q"].flatten().tolist() == [1, 0]
    cache.layers[0].batch_repeat_interleave(2)
    assert cache.layers[0].batch_size == 4 and cache.layers[0].recurrent_state[2].flatten().tolist() == [3, 3, 2, 2]
    cache.layers[0].batch_select_indices(torch.tensor([0, 3]))
    assert cache.layers[0].recurrent_state[0].flatten().tolist() == [1, 0]
    with pytest.raises(RuntimeError, match="cropped"):
        cache.layers[0].crop(1)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.layers[0].recurrent_state is None
    assert isinstance(cache.layers[2], RecurrentLayerState)


def test_pick_cache_accepts_either_keyword_and_checks_the_type():
    cache = RecurrentCache(num_layers=1)
    assert pick_cache(cache, None) is cache and pick_cache(None, cache) is cache and pick_cache(cache, cache) is cache
    with pytest.raises(ValueError, match="either"):
        pick_cache(cache, RecurrentCache(num_layers=1))
    with pytest.raises(TypeError, match="RecurrentCache"):
        pick_cache(object(), None)


# ---------------------------------------------------------------------------------------------------------------
# Losses


def test_cross_entropy_means_or_divides_by_num_items_in_batch():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), torch.tensor([1, -100, 3, 0, -100, 4])
    keep = targets != -100
    torch.testing.assert_close(cross_entropy(logits, targets), F.cross_entropy(logits[keep], targets[keep]))
    total = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    torch.testing.assert_close(cross_entropy(logits, targets, num_items_in_batch=torch.tensor(10)), total / 10)
    nothing = cross_entropy(logits.requires_grad_(), torch.full((6,), -100))
    assert nothing.item() == 0.0 and nothing.requires_grad


def _causal_lm_data(seed=0, B=3, T=9, V=13):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen) * 2
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :4] = -100
    labels[2, 5] = -100
    labels[1, -1] = -100
    return logits, labels


@pytest.mark.parametrize("items", [None, 40, "tensor"])
def test_causal_lm_loss_is_transformers_causal_lm_loss(items):
    # values and gradients equal transformers' ForCausalLMLoss (labels shifted inside), mean or sum / num_items
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits, labels = _causal_lm_data()
    kw = {} if items is None else {"num_items_in_batch": 40 if items == 40 else torch.tensor(40)}
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = causal_lm_loss(ours, labels, vocab_size=13, **kw)
    want = ForCausalLMLoss(theirs, labels, 13, **kw)
    (g,) = torch.autograd.grad(loss, ours)
    (gw,) = torch.autograd.grad(want, theirs)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, gw, rtol=1e-6, atol=1e-7)
    # the shift is the next token's: unshifted labels, or dividing by another count, would give another loss
    assert not torch.allclose(loss, ForCausalLMLoss(logits, labels, 13, shift_labels=labels, **kw))
    shift = F.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(causal_lm_loss(logits, None, shift_labels=shift, **kw), want)
    torch.testing.assert_close(causal_lm_loss(logits, labels, shift_labels=shift, **kw), want)


def test_causal_lm_loss_kernel_path_matches_transformers():
    # the same on the Triton kernels (the interpreter on CPU): forward and backward kernels ran
    from transformers.loss.loss_utils import ForCausalLMLoss

    from hfzoo.ops.launch import count_launches

    logits, labels = _causal_lm_data(seed=1)
    ours = logits.clone().requires_grad_()
    with count_launches() as n:
        loss = causal_lm_loss(ours, labels, num_items_in_batch=torch.tensor(30))
        (g,) = torch.autograd.grad(loss, ours)
    assert n["softmax_ce.fwd"] == 1 and n["softmax_ce.bwd"] == 1
    theirs = logits.clone().requires_grad_()
    want = ForCausalLMLoss(theirs, labels, 13, num_items_in_batch=torch.tensor(30))
    (gw,) = torch.autograd.grad(want, theirs)
    assert rel_err(loss, want) < 1e-6 and rel_err(g, gw) < 1e-6


def test_causal_lm_loss_without_counted_targets_and_bad_labels():
    logits, labels = _causal_lm_data()
    labels[:, 1:] = -100                          # every target ignored (the first label is never a target)
    ours = logits.clone().requires_grad_()
    loss = causal_lm_loss(ours, labels)           # ForCausalLMLoss gives NaN here; the helper, like cross_entropy, 0
    (g,) = torch.autograd.grad(loss, ours)
    assert loss.item() == 0.0 and torch.count_nonzero(g) == 0
    assert causal_lm_loss(logits, labels, num_items_in_batch=5).item() == 0.0
    with pytest.raises(ValueError, match="labels must have one entry per row"):
        causal_lm_loss(logits[:, -1:], labels)   # logits cut by logits_to_keep: labels are the caller's concern
    with pytest.raises(ValueError, match="labels or shift_labels"):
        causal_lm_loss(logits)


@pytest.mark.parametrize("problem", ["regression", "single_label_classification", "multi_label_classification"])
def test_classification_loss_matches_the_mean_and_sums_with_num_items(problem):
    torch.manual_seed(0)
    num_labels = 1 if problem == "regression" else 3
    logits = torch.randn(4, num_labels)
    labels = {"regression": torch.randn(4), "single_label_classification": torch.tensor([0, 2, 1, 2]),
              "multi_label_classification": torch.randint(0, 2, (4, 3)).float()}[problem]
    config = PreTrainedConfig()
    mean = classification_loss(config, logits, labels)
    assert config.problem_type == problem    # inferred from the labels and stored
    expected = {"regression": lambda: F.mse_loss(logits[:, 0], labels),
                "single_label_classification": lambda: F.cross_entropy(logits, labels),
                "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(logits, labels)}[problem]()
    torch.testing.assert_close(mean, expected)
    n = labels.numel()
    torch.testing.assert_close(classification_loss(config, logits, labels, num_items_in_batch=2 * n), mean / 2)


# ---------------------------------------------------------------------------------------------------------------
# Rotary, vision, images


def test_rotary_is_a_rotation_by_relative_position():
    torch.manual_seed(0)
    inv = rope_inv_freq(8, 10000.0)
    assert inv.shape == (4,) and inv[0] == 1.0
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def score(i, j):
        return (apply_rotary(q, torch.tensor([[i]]), inv) * apply_rotary(k, torch.tensor([[j]]), inv)).sum()
    torch.testing.assert_close(score(7, 3), score(14, 10))
    torch.testing.assert_close(apply_rotary(q, torch.tensor([[0]]), inv), q)


def test_patchify_unpatchify_and_patch_embedding():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 12)
    tokens = patchify(images, 4)
    assert tokens.shape == (2, 6, 48)
    assert torch.equal(unpatchify(tokens, 8, 12, 4), images)
    assert torch.equal(tokens[0, 1], images[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    embed = PatchEmbedding(3, 5, 4)
    torch.testing.assert_close(embed(images), tokens @ embed.weight.permute(0, 2, 3, 1).reshape(5, -1).T + embed.bias)
    with pytest.raises(ValueError, match="pixel_values"):
        embed(torch.randn(2, 1, 8, 8))


def test_resize_position_grid():
    grid = torch.randn(1, 16, 5)
    assert resize_position_grid(grid, 4, 4) is grid
    big = resize_position_grid(grid, 8, 6)
    assert big.shape == (1, 48, 5)
    const = torch.ones(1, 9, 2)
    torch.testing.assert_close(resize_position_grid(const, 5, 5), torch.ones(1, 25, 2))


def test_one_image_rule():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(to_pil_image(rgb)), rgb)
    assert np.array_equal(np.asarray(to_pil_image(rgb.transpose(2, 0, 1))), rgb)          # CHW
    assert np.array_equal(np.asarray(to_pil_image(torch.from_numpy(rgb))), rgb)           # tensor
    assert np.array_equal(np.asarray(to_pil_image(rgb / 255.0)), rgb)                      # floats in [0, 1]
    assert np.array_equal(np.asarray(to_pil_image(rgb.astype(np.float32))), rgb)           # floats in 0..255
    assert np.array_equal(np.asarray(to_pil_image(rgb.astype(np.int64))), rgb)             # integers: 0..255
    gray = np.asarray(to_pil_image(np.ones((3, 3, 1), dtype=np.int64)))
    assert gray.shape == (3, 3) and (gray == 1).all()          # integer 1 is 1/255, not white
    with pytest.raises(TypeError, match="images"):
        to_pil_image("not an image")
    with pytest.raises(ValueError, match="shape"):
        to_pil_image(np.zeros((2, 2, 2, 2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_mlp_keeps_less_for_backward_with_the_eager_numbers(dtype):
    from hfzoo.layers.mlp import SwiGLUDownFunction, SwiGLUMLP

    torch.manual_seed(0)
    mlp = SwiGLUMLP(16, 40).to(dtype)
    x = torch.randn(3, 7, 16, dtype=dtype, requires_grad=True)
    dy = torch.randn(3, 7, 16, dtype=dtype)

    def eager(m, t):
        return m.down_proj(F.silu(m.gate_proj(t)) * m.up_proj(t))

    out = mlp(x)
    assert type(out.grad_fn).__name__ == SwiGLUDownFunction.__name__ + "Backward"
    kept = {t.data_ptr() for t in out.grad_fn.saved_tensors}
    grads = torch.autograd.grad(out, (x, *mlp.parameters()), dy)
    ref = eager(mlp, x)
    ref_grads = torch.autograd.grad(ref, (x, *mlp.parameters()), dy)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)   # the same ops in the same order
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **tol)
    assert len(kept) == 3   # what the backward kept: gate, up and the weight, not the activation or the product
    # inference, a frozen path and a wrapped down projection use the eager form
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), ref.detach(), rtol=0, atol=0)
    handle = mlp.down_proj.register_forward_hook(lambda *a: None)
    assert type(mlp(x).grad_fn).__name__ != SwiGLUDownFunction.__name__ + "Backward"
    handle.remove()


def test_swiglu_mlp_keeps_loras_on_the_down_projection():
    import peft

    from hfzoo.layers.mlp import SwiGLUMLP

    torch.manual_seed(0)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = SwiGLUMLP(16, 32)

        def forward(self, x):
            return self.mlp(x)

    model = peft.get_peft_model(Wrap(), peft.LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights=False))
    x = torch.randn(5, 16)
    lora_down = model.base_model.model.mlp.down_proj
    mlp = model.base_model.model.mlp
    expected = lora_down(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(model(x), expected)
    with model.disable_adapter():
        assert not torch.allclose(model(x), expected)   # the adapter changes the output, and is applied above
