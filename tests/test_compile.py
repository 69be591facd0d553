"""Every backend's forward and backward trace as one graph (no host-device sync, no graph break),
and the compiled model computes what the eager one does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kunbench.backends.registry import get_backend
from tests.backend_utils import make_batch, make_schema

BACKENDS = ["wukong", "interformer", "kunlun"]


def tiny_model(name, schema, **overrides):
    spec = get_backend(name)
    cfg = dataclasses.replace(spec.presets["tiny"], **overrides)
    torch.manual_seed(0)
    return spec.build(cfg, schema)


def ragged_batch(seed: int):
    """Six rows whose histories include empty ones and one-event ones, in every stream."""
    schema = make_schema(n_multihot=2)
    return schema, make_batch(schema, 6, seed=seed, lengths={"impression": [9, 0, 4, 12, 1, 3],
                                                             "click": [0, 2, 5, 1, 0, 7],
                                                             "conversion": [1, 0, 0, 2, 0, 0]})


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
    loss.backward()
    grads = {n.removeprefix("_orig_mod."): (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
             for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("name", BACKENDS)
def test_forward_backward_is_one_graph(name):
    # fullgraph=True turns any graph break (.item(), .tolist(), int(tensor), boolean-mask indexing,
    # data-dependent output shapes) into an error
    schema, batch = ragged_batch(seed=3)
    eager = tiny_model(name, schema, sparse_embeddings=False)
    compiled_model = tiny_model(name, schema, sparse_embeddings=False)
    compiled_model.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    loss_e, grads_e = loss_and_grads(eager, batch)
    loss_c, grads_c = loss_and_grads(compiled, batch)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for n in grads_e:
        torch.testing.assert_close(grads_c[n], grads_e[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_inductor_compiled_model_matches_eager():
    # the real --compile path (inductor, power-of-two bucketed widths) on the smallest backend
    from kunbench.train.compiled import CompiledModel

    schema, batch = ragged_batch(seed=4)
    model = tiny_model("wukong", schema).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(batch)
        compiled = CompiledModel(model)(batch)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_train_compile_flag_trains_and_reports_compile_time(tiny_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from kunbench.cli import main

    torch._dynamo.reset()
    res = CliRunner().invoke(main, ["train", "-b", "wukong", "--preset", "tiny", "-d", str(tiny_dataset),
                                    "--steps", "4", "--batch-size", "64", "--compile", "--no-progress",
                                    "--device", "cpu", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "compile (steps that compiled)" in res.output
    doc = json.loads(next(tmp_path.glob("train-wukong-*.json")).read_text())
    assert doc["train_config"]["compile"] is True
    assert doc["metrics"]["train"]["compile_steps"] >= 1 and doc["metrics"]["train"]["compile_s"] > 0
    assert doc["metrics"]["train"]["steps"] == 4


def test_bucketed_bounds_stay_within_each_streams_cap():
    # a cap that is not a power of two: the bucketed bound must not exceed it, or the packed stream
    # would take the "cut it here" branch (a device read, so a graph break under fullgraph)
    from kunbench.train.compiled import CompiledModel

    schema = make_schema(n_multihot=1)
    batch = make_batch(schema, 4, seed=5, lengths={"impression": [3, 9, 0, 12], "click": [17, 2, 0, 5],
                                                   "conversion": [1, 0, 2, 0]})
    model = tiny_model("kunlun", schema, sparse_embeddings=False,
                       streams={"impression": dataclasses.replace(get_backend("kunlun").presets["tiny"].streams[
                           "impression"], max_len=12),
                                "click": dataclasses.replace(get_backend("kunlun").presets["tiny"].streams["click"],
                                                             max_len=20),
                                "conversion": get_backend("kunlun").presets["tiny"].streams["conversion"]}).eval()
    class Wrapped(torch.nn.Module):  # like DDP: the model sits at `.module`, attributes are not forwarded
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, b):
            return self.module(b)

    with torch.no_grad():
        eager = model(batch)
        for net in (model, Wrapped(model)):
            torch._dynamo.reset()
            got = CompiledModel(net, backend="aot_eager", fullgraph=True)(batch)
            torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)


def test_compiled_model_runs_one_row_group():
    # row groups change shape with every batch: a compiled model gets batches without length_slices
    from kunbench.train.compiled import CompiledModel

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, b):
            seen.append(dict(b.length_slices))
            return b.labels

    batch = make_batch(make_schema(), 6, seed=1)
    assert batch.length_slices  # the test batch carries them
    CompiledModel(Recorder(), backend="eager")(batch)
    assert seen == [{}]
