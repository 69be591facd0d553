"""The training loop on the toy backend: determinism, failure naming the step, optimizers."""

from __future__ import annotations

import pytest
import torch

from kunbench.errors import KunbenchError
from kunbench.train.config import TrainConfig
from kunbench.train.evaluate import evaluate
from kunbench.train.loop import TrainingDiverged, train
from kunbench.train.optim import Optimizers, RowWiseAdagrad, WeightAverage, lr_scale, split_parameters
from toy_backend import ToyConfig, ToyModel, toy_batches, toy_schema

SCHEMA = toy_schema()
TRAIN = toy_batches(SCHEMA, n_batches=120, batch_size=128, seed=0)
EVAL = toy_batches(SCHEMA, n_batches=8, batch_size=256, seed=1)


def _run(seed: int = 0, cfg: TrainConfig | None = None, model_cfg: ToyConfig | None = None, batches=TRAIN):
    torch.manual_seed(seed)
    model = ToyModel(model_cfg or ToyConfig(), SCHEMA)
    stats = train(model, batches, (cfg or TrainConfig(seed=seed)).validate())
    return model, stats, evaluate(model, EVAL)


def _untrained_ne() -> float:
    torch.manual_seed(0)
    return evaluate(ToyModel(ToyConfig(), SCHEMA), EVAL).ne


def test_same_seed_gives_identical_ne_and_weights():
    m1, s1, r1 = _run(0, batches=TRAIN[:40])
    m2, s2, r2 = _run(0, batches=TRAIN[:40])
    assert r1.ne == r2.ne and r1.auc == r2.auc
    assert s1.mean_loss == s2.mean_loss
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    _, _, r3 = _run(1, batches=TRAIN[:40])
    assert r3.ne != r1.ne


def test_one_pass_learns_and_counts_steps():
    _, stats, res = _run(0)
    assert stats.steps == len(TRAIN) and stats.examples == 120 * 128
    assert not stats.stopped_early
    assert res.ne < 0.97 and res.gap_closed > 0.2 and res.auc > 0.65  # measured 0.948, 0.30, 0.68
    assert res.oracle_ne is not None and res.oracle_ne < res.ne


def test_steps_limit():
    _, stats, _ = _run(0, TrainConfig(steps=7))
    assert stats.steps == 7 and stats.examples == 7 * 128


def test_nan_loss_stops_naming_the_step():
    with pytest.raises(TrainingDiverged, match=r"step 5: loss is not finite"):
        _run(0, model_cfg=ToyConfig(nan_after=5))
    assert issubclass(TrainingDiverged, KunbenchError)  # the CLI prints it as one line, exit 2


def test_divergence_stops_naming_the_step():
    with pytest.raises(TrainingDiverged, match=r"diverged at step 11"):
        _run(0, TrainConfig(divergence_loss=0.01))


def test_empty_train_split_is_an_error():
    with pytest.raises(KunbenchError, match="no training batches"):
        _run(0, batches=[])


def test_split_parameters_uses_embedding_parameters():
    model = ToyModel(ToyConfig(), SCHEMA)
    groups = split_parameters(model)
    assert {id(p) for p in groups.embedding} == {id(model.table.weight), id(model.items.weight)}
    assert len(groups.embedding) + len(groups.dense) == len(list(model.parameters()))


def test_split_parameters_detects_embedding_modules():
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1))
    groups = split_parameters(net)
    assert [p.shape for p in groups.embedding] == [torch.Size([10, 4])]
    assert groups.dense_count == 5


@pytest.mark.parametrize("sparse", [False, True])
def test_rowwise_adagrad_moves_only_touched_rows(sparse):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 3, sparse=sparse)
    before = emb.weight.detach().clone()
    opt = RowWiseAdagrad([emb.weight], lr=0.1)
    ids = torch.tensor([1, 5, 5, 7])
    emb(ids).sum().backward()
    opt.step()
    moved = (emb.weight.detach() != before).any(dim=1).nonzero().squeeze(1).tolist()
    assert moved == [1, 5, 7]
    # first step of row-wise Adagrad: w -= lr * g / sqrt(mean(g^2)); row 5 has g = 2 everywhere
    assert torch.allclose(emb.weight[5].detach(), before[5] - 0.1, atol=1e-6)
    state = opt.state[emb.weight]["sum"]
    assert state[5].item() == pytest.approx(4.0) and state[0].item() == 0.0


@pytest.mark.parametrize("sparse", [False, True])
def test_rowwise_adagrad_initial_accumulator_damps_the_first_step(sparse):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(8, 3, sparse=sparse)
    before = emb.weight.detach().clone()
    opt = RowWiseAdagrad([emb.weight], lr=0.1, initial_accumulator=12.0)
    emb(torch.tensor([2, 2])).sum().backward()  # g = 2 on row 2: G = 12 + 4, step = 0.1 * 2 / 4
    opt.step()
    assert torch.allclose(emb.weight[2].detach(), before[2] - 0.05, atol=1e-6)
    assert opt.state[emb.weight]["sum"][0].item() == 12.0
    with pytest.raises(ValueError, match="initial_accumulator"):
        RowWiseAdagrad([emb.weight], initial_accumulator=-1.0)


def test_rowwise_adagrad_sparse_equals_dense():
    finals = []
    for sparse in (False, True):
        _, _, res = _run(0, TrainConfig(steps=40), model_cfg=ToyConfig(sparse=sparse))
        finals.append(res.ne)
    assert finals[0] == pytest.approx(finals[1], rel=1e-6)


@pytest.mark.parametrize("kind", ["adagrad", "adamw"])
def test_other_embedding_optimizers_train(kind):
    _, _, res = _run(0, TrainConfig(embedding_optimizer=kind, steps=30))
    assert res.ne < _untrained_ne()


def test_sparse_adam_needs_sparse_gradients():
    with pytest.raises(KunbenchError, match="sparse_adam needs"):
        _run(0, TrainConfig(embedding_optimizer="sparse_adam"))
    _, _, res = _run(0, TrainConfig(embedding_optimizer="sparse_adam", steps=30), ToyConfig(sparse=True))
    assert res.ne < _untrained_ne()


def test_lr_schedules_warm_up_then_decay_to_lr_final():
    const = TrainConfig(warmup_steps=4)
    assert [lr_scale(const, s, 10) for s in (1, 2, 4, 10)] == [0.25, 0.5, 1.0, 1.0]
    lin = TrainConfig(warmup_steps=2, lr_schedule="linear", lr_final=0.1)
    assert lr_scale(lin, 1, 12) == 0.5 and lr_scale(lin, 3, 12) == 1.0
    assert lr_scale(lin, 12, 12) == pytest.approx(0.1)
    assert lr_scale(lin, 8, 12) == pytest.approx(0.1 + 0.9 * (1 - 5 / 9))
    cos = TrainConfig(lr_schedule="cosine")
    assert lr_scale(cos, 1, 101) == 1.0 and lr_scale(cos, 51, 101) == pytest.approx(0.5)
    assert lr_scale(cos, 101, 101) == pytest.approx(0.0, abs=1e-12)
    assert lr_scale(cos, 50, None) == 1.0  # no known length: no decay


def test_cosine_schedule_reaches_lr_final_in_the_optimizers():
    torch.manual_seed(0)
    model = ToyModel(ToyConfig(), SCHEMA)
    cfg = TrainConfig(lr_schedule="cosine", lr_final=0.2, steps=5).validate()
    opts = Optimizers(split_parameters(model), cfg, sparse_grads=False)
    opts.set_step(5, 5)
    assert [g["lr"] for o in opts.opts for g in o.param_groups] == pytest.approx([cfg.lr * 0.2, cfg.embedding_lr * 0.2])
    _, stats, res = _run(0, cfg)  # the loop takes the length from cfg.steps
    assert stats.steps == 5 and res.ne == res.ne


def test_weight_average_is_the_bias_corrected_ema_of_the_visited_weights():
    w = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([w], decay=0.9)
    visited = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, -1.0]), torch.tensor([5.0, 1.0, 0.0])]
    for v in visited:
        with torch.no_grad():
            w.copy_(v)
        avg.update()
    avg.copy_to_params()
    weights = torch.tensor([0.9 ** 2, 0.9, 1.0]) * 0.1
    want = (weights[:, None] * torch.stack(visited)).sum(0) / (1 - 0.9 ** 3)
    assert torch.allclose(w.detach(), want, atol=1e-6)


def test_training_ends_on_the_averaged_dense_weights_only():
    raw, _, _ = _run(0, TrainConfig(steps=30, weight_ema=0.0))
    avg, _, _ = _run(0, TrainConfig(steps=30, weight_ema=0.9))
    emb = {id(p) for p in split_parameters(raw).embedding}
    dense = {n for n, p in raw.named_parameters() if id(p) not in emb}
    raw_sd, avg_sd = raw.state_dict(), avg.state_dict()
    assert any(not torch.equal(raw_sd[n], avg_sd[n]) for n in dense)
    for n in raw_sd:  # embeddings train the same either way (the average never feeds back)
        if n not in dense:
            assert torch.equal(raw_sd[n], avg_sd[n]), n


def test_train_config_validation():
    with pytest.raises(KunbenchError, match="weight_ema"):
        TrainConfig(weight_ema=1.0).validate()
    with pytest.raises(KunbenchError, match="embedding_initial_accumulator"):
        TrainConfig(embedding_initial_accumulator=-0.1).validate()
    with pytest.raises(KunbenchError, match="lr_schedule"):
        TrainConfig(lr_schedule="step").validate()
    with pytest.raises(KunbenchError, match="lr_final"):
        TrainConfig(lr_final=1.5).validate()
    with pytest.raises(KunbenchError, match="embedding_optimizer"):
        TrainConfig(embedding_optimizer="sgd").validate()
    with pytest.raises(KunbenchError, match="dtype"):
        TrainConfig(dtype="fp16").validate()
    with pytest.raises(KunbenchError, match="lr must be > 0"):
        TrainConfig(lr=0).validate()


@pytest.mark.parametrize("backend", ["wukong", "interformer"])
def test_real_backends_train_deterministically(backend, tmp_path_factory):
    from dataset_fixture import write_contract_dataset
    from kunbench.train.runner import run_training

    data = tmp_path_factory.mktemp(backend) / "data"
    write_contract_dataset(data, rows_per_file=(256,), eval_rows_per_file=(128,))
    runs = [run_training(backend, data, preset="tiny", train_cfg=TrainConfig(batch_size=64, steps=3),
                         write=False, device="cpu") for _ in range(2)]
    assert runs[0].train.steps == 3
    assert runs[0].eval.ne == runs[1].eval.ne and runs[0].eval.auc == runs[1].eval.auc
    m = runs[0].document["metrics"]
    assert m["flops_per_example"] > 0 and m["embedding_params"] > 0 and m["dense_params"] > 0
