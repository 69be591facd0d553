"""Every backend trains under bf16 autocast: `kunbench selfcheck` runs the backends in bf16 on a GPU,
and an op that mixes bf16 and float32 tensors would only fail there. CPU autocast (its op lists are
close to CUDA's) catches those mismatches here."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.test_compile import BACKENDS, ragged_batch, tiny_model


@pytest.mark.parametrize("name", BACKENDS)
def test_a_training_step_under_bf16_autocast_matches_float32(name):
    schema, batch = ragged_batch(seed=3)
    model = tiny_model(name, schema, sparse_embeddings=False)
    ref = model(batch).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = model(batch)
    # a norm fed a bf16 input with a float32 weight leaves its fused kernel: slow on a GPU
    assert not [str(w.message) for w in caught if "Cannot dispatch to fused" in str(w.message)]
    assert logits.dtype == torch.float32  # the loss is taken in float32
    # bf16 keeps 8 mantissa bits: a few parts in a thousand of the logits' scale, never a different model
    assert (logits.detach() - ref).abs().max() <= 0.05 * max(1.0, float(ref.abs().max()))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, n
        assert torch.isfinite(p.grad.to_dense() if p.grad.is_sparse else p.grad).all(), n
