"""Backend registry: built-ins and third-party backends through the `kunbench.backends` entry points."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
import torch

from backend_utils import make_batch, make_schema
from kunbench import plugins
from kunbench.backends import registry
from kunbench.backends.common import parameter_counts
from kunbench.backends.registry import BackendSpec, available_backends, get_backend
from kunbench.errors import KunbenchError


@pytest.mark.parametrize("name", ["wukong", "interformer", "kunlun"])
def test_schema_without_sequences(name):
    spec = get_backend(name)
    config = spec.make_config("tiny")
    schema = make_schema(event_types=())
    batch = make_batch(schema, 3)
    assert spec.build(config, schema)(batch).shape == (3,)
    assert torch.isfinite(torch.as_tensor(spec.flops_per_example(config, schema, batch))).all()


@pytest.mark.parametrize("name", ["wukong", "interformer"])
def test_builtins_found_and_usable(name):
    assert name in available_backends()
    spec = get_backend(name)
    assert isinstance(spec, BackendSpec) and spec.name == name
    schema = make_schema()
    config = spec.make_config("tiny")
    model = spec.build(config, schema)
    batch = make_batch(schema, 3)
    assert model(batch).shape == (3,)
    counts = parameter_counts(model)
    assert counts["total"] == counts["embedding"] + counts["dense"] > 0
    assert counts["embedding"] == model.input_layer.total_rows * config.d
    flops = spec.flops_per_example(config, schema, batch)
    assert flops.shape == (3,) and flops.dtype == torch.float64 and bool((flops > 0).all())


def test_unknown_backend_and_preset_are_one_line_errors():
    with pytest.raises(KunbenchError, match="unknown backend 'nope'"):
        get_backend("nope")
    with pytest.raises(KunbenchError, match="no preset 'huge'"):
        get_backend("wukong").make_config("huge")


def test_third_party_backend_from_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "thirdparty_backend.py"
    pkg.write_text(textwrap.dedent("""
        import torch
        from dataclasses import dataclass
        from torch import nn
        from kunbench.backends.registry import BackendSpec

        @dataclass(frozen=True)
        class Cfg:
            width: int = 4

        class Model(nn.Module):
            def __init__(self, cfg, schema):
                super().__init__()
                self.bias = nn.Parameter(torch.zeros(()))
            def forward(self, batch):
                return self.bias.expand(batch.batch_size).float()

        SPEC = BackendSpec("constant", "always the same logit", Cfg, {"tiny": Cfg()}, "tiny",
                           lambda cfg, schema: Model(cfg, schema),
                           lambda cfg, schema, batch: torch.zeros(batch.batch_size, dtype=torch.float64))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "thirdparty_backend", raising=False)
    eps = [EntryPoint(name="constant", value="thirdparty_backend:SPEC", group=registry.ENTRY_POINT_GROUP)]

    def fake_entry_points(group=None, **kw):
        return [ep for ep in eps if group in (None, ep.group)]

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)
    assert "constant" in available_backends()
    spec = get_backend("constant")
    schema = make_schema()
    model = spec.build(spec.make_config(), schema)
    assert torch.equal(model(make_batch(schema, 2)), torch.zeros(2))

    eps.append(EntryPoint(name="broken", value="thirdparty_backend:Cfg", group=registry.ENTRY_POINT_GROUP))
    with pytest.raises(KunbenchError, match="not a BackendSpec"):
        get_backend("broken")


def test_logreg_baseline_runs_only_when_named(tmp_path):
    from dataset_fixture import write_contract_dataset
    from kunbench.suites.context import RunOptions, SuiteContext

    spec = get_backend("logreg")
    schema = make_schema()
    model = spec.build(spec.make_config(), schema)
    batch = make_batch(schema, 4)
    assert model(batch).shape == (4,) and torch.equal(model(batch), torch.zeros(4))  # starts at zero
    assert spec.max_lengths(spec.make_config(), schema) == 0  # no histories read
    ctx = SuiteContext(RunOptions(suites=["ne"]), "ne")
    assert "logreg" in available_backends() and "logreg" not in ctx.backends()
    ctx = SuiteContext(RunOptions(suites=["ne"], backends=["logreg"]), "ne")
    assert ctx.backends() == ["logreg"]
    root = tmp_path / "d"
    write_contract_dataset(root, rows_per_file=(300,), eval_rows_per_file=(200,))
    from click.testing import CliRunner

    from kunbench.cli import main

    res = CliRunner().invoke(main, ["train", "--backend", "logreg", "-d", str(root), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
