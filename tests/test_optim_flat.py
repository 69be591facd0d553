"""The flat dense buffer (kunbench.train.flat) and the sparse duplicate-row sum of RowWiseAdagrad:
both must change how the optimizer step is dispatched, never what it computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kunbench.errors import KunbenchError
from kunbench.train.config import TrainConfig
from kunbench.train.optim import Optimizers, split_parameters, sum_duplicate_rows
from toy_backend import ToyConfig, ToyModel, toy_batches, toy_schema

SCHEMA = toy_schema()
BATCHES = toy_batches(SCHEMA, n_batches=6, batch_size=64, seed=0)


def _model(seed: int = 0) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(ToyConfig(), SCHEMA)


def _loss(model, batch):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels.float())


def _train_flat(model, cfg: TrainConfig, steps: int):
    opts = Optimizers(split_parameters(model), cfg, sparse_grads=False)
    assert opts.flat is not None
    for b in BATCHES[:steps]:
        _loss(model, b).backward()
        opts.clip_dense_grad_norm_(cfg.clip_grad_norm)
        opts.step()
        opts.zero_grad()
    return opts


def _train_per_tensor(model, cfg: TrainConfig, steps: int):
    """The reference: AdamW over the separate tensors, as before the flat buffer."""
    groups = split_parameters(model)
    adam = torch.optim.AdamW(groups.dense, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    emb = Optimizers(type(groups)(groups.embedding, []), cfg, sparse_grads=False)
    for b in BATCHES[:steps]:
        _loss(model, b).backward()
        torch.nn.utils.clip_grad_norm_(groups.dense, cfg.clip_grad_norm)
        adam.step()
        emb.step()
        adam.zero_grad(set_to_none=True)
        emb.zero_grad()


def test_flat_buffer_steps_exactly_like_separate_tensors_when_clipping_is_idle():
    cfg = TrainConfig(clip_grad_norm=1e6).validate()  # the clip factor is exactly 1
    a, b = _model(), _model()
    _train_flat(a, cfg, 5)
    _train_per_tensor(b, cfg, 5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_flat_buffer_matches_separate_tensors_under_active_clipping():
    cfg = TrainConfig(clip_grad_norm=1e-3).validate()
    a, b = _model(), _model()
    _train_flat(a, cfg, 5)
    _train_per_tensor(b, cfg, 5)
    changed = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(pa, _model().state_dict()[name])
    assert changed  # the steps moved the weights


def test_parameters_and_gradients_are_views_of_the_flat_buffers():
    model = _model()
    opts = Optimizers(split_parameters(model), TrainConfig().validate(), sparse_grads=False)
    flat = opts.flat
    assert len(opts.dense) == 1 and opts.dense[0] is flat.param
    total = sum(p.numel() for p in flat.params)
    assert total <= flat.param.numel() < total + 16 * len(flat.params)  # alignment gaps only
    for p in flat.params:
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.param.grad.untyped_storage().data_ptr()
    _loss(model, BATCHES[0]).backward()
    assert flat.param.grad.abs().sum() > 0  # backward wrote into the slices


def test_gradients_replaced_behind_the_optimizers_back_still_reach_the_step():
    """model.zero_grad(set_to_none=True) drops the views; the next backward's gradients must still
    be the ones the optimizer applies (not the zeros left in the flat buffer)."""
    cfg = TrainConfig(clip_grad_norm=1e6).validate()
    a, b = _model(), _model()
    opts = Optimizers(split_parameters(a), cfg, sparse_grads=False)
    a.zero_grad(set_to_none=True)
    _loss(a, BATCHES[0]).backward()
    opts.clip_dense_grad_norm_(cfg.clip_grad_norm)
    opts.step()
    _train_per_tensor(b, cfg, 1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_a_parameter_moved_after_the_optimizer_was_built_is_a_clear_error():
    model = _model()
    opts = Optimizers(split_parameters(model), TrainConfig().validate(), sparse_grads=False)
    first = opts.flat.params[0]
    first.data = first.data.clone()
    _loss(model, BATCHES[0]).backward()
    with pytest.raises(KunbenchError, match="moved or replaced"):
        opts.step()


def test_mixed_dtypes_keep_separate_tensors():
    model = _model()
    groups = split_parameters(model)
    groups.dense[0].data = groups.dense[0].data.double()
    opts = Optimizers(groups, TrainConfig().validate(), sparse_grads=False)
    assert opts.flat is None and len(opts.dense) == len(groups.dense)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 30), min_size=0, max_size=60), width=st.integers(1, 5))
def test_sum_duplicate_rows_is_coalesce(rows, width):
    idx = torch.tensor(rows, dtype=torch.int64).view(1, -1)
    values = torch.randn(len(rows), width, generator=torch.Generator().manual_seed(len(rows)))
    grad = torch.sparse_coo_tensor(idx, values, (31, width), check_invariants=True)
    got_rows, got_values = sum_duplicate_rows(grad)
    ref = grad.coalesce()
    assert torch.equal(got_rows, ref.indices()[0])
    # the duplicates are summed in another order than coalesce's: equal up to float rounding
    torch.testing.assert_close(got_values, ref.values(), rtol=1e-5, atol=1e-4)
    again_rows, again_values = sum_duplicate_rows(grad)
    assert torch.equal(again_rows, got_rows) and torch.equal(again_values, got_values)  # deterministic


def test_slices_start_aligned_and_gaps_stay_zero():
    model = _model()
    opts = Optimizers(split_parameters(model), TrainConfig().validate(), sparse_grads=False)
    base = opts.flat.param.data_ptr()
    for p in opts.flat.params:
        assert (p.data_ptr() - base) % (16 * p.element_size()) == 0
    covered = torch.zeros(opts.flat.param.numel(), dtype=torch.bool)
    for p in opts.flat.params:
        start = (p.data_ptr() - base) // p.element_size()
        covered[start:start + p.numel()] = True
    for b in BATCHES[:2]:
        _loss(model, b).backward()
        opts.clip_dense_grad_norm_(1.0)
        opts.step()
        opts.zero_grad()
    assert torch.count_nonzero(opts.flat.param.detach()[~covered]) == 0


@pytest.mark.parametrize("backend", ["kunlun", "interformer", "wukong"])
def test_every_dense_parameter_of_a_shipped_backend_gets_a_gradient(backend):
    """The flat buffer gives an unused parameter a zero gradient where per-tensor AdamW would skip
    it; that is only the same optimizer if every dense parameter is used in every step."""
    from backend_utils import make_batch, make_schema
    from kunbench.backends.registry import get_backend

    schema = make_schema()
    spec = get_backend(backend)
    torch.manual_seed(0)
    model = spec.build(spec.presets["tiny"], schema)
    batch = make_batch(schema, batch_size=8, seed=0)
    _loss(model, batch).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and p not in set(split_parameters(model).embedding)]
    assert not missing
