"""GDPA operator benchmarks for pytest-benchmark regression tracking.

    pytest tests/bench/test_gdpa_bench.py --benchmark-enable --benchmark-autosave
    pytest tests/bench/test_gdpa_bench.py --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10%

The default `--benchmark-disable` (pyproject) runs each once as a plain test. Implementation: the
dispatcher's automatic choice (the Triton kernels on CUDA, the PyTorch reference on CPU), on the
small CPU grid of the kernels suite, or on CUDA a mid-size grid (bf16). CUDA timings synchronize
inside the timed call. Each benchmark records shape, implementation and analytic FLOPs in
extra_info, so saved runs say what they measured.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kunbench.hardware import TRAINING_FLOPS_MULTIPLIER
from kunbench.kernels import gdpa, select_implementation
from kunbench.suites.kernels import CPU_SHAPES, forward_flops, make_inputs

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32


def _shapes():
    if not CUDA:
        return CPU_SHAPES
    # mid-size: long enough to time the kernels, short enough for a CI GPU
    return [dict(s, name=s["name"].replace("_small", "_mid"), batch=128, max_len=512, heads=4, head_dim=128,
                 **({"f": 256} if s["mode"] == "pffn" else {}), **({"seeds": 128} if s["mode"] == "seed" else {}),
                 **({"window": 64} if s["mode"] == "self" else {})) for s in CPU_SHAPES]


SHAPES = _shapes()


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(autouse=True)
def _auto_dispatch(monkeypatch):
    monkeypatch.delenv("KUNBENCH_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_gdpa_forward(benchmark, shape):
    q, k, v, kw, lq, lk = make_inputs(shape, DEVICE, DTYPE)
    impl = select_implementation(DEVICE, dtype=DTYPE)
    benchmark.extra_info.update(shape=shape, implementation=impl, device=str(DEVICE), dtype=str(DTYPE),
                                flops=forward_flops(shape, lq, lk))

    def run():
        with torch.no_grad():
            out = gdpa(q, k, v, **kw)
        _sync()
        return out

    out = benchmark(run)
    assert out.shape[-2:] == q.shape[-2:] and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_gdpa_forward_backward(benchmark, shape):
    q, k, v, kw, lq, lk = make_inputs(shape, DEVICE, DTYPE)
    impl = select_implementation(DEVICE, dtype=DTYPE)
    benchmark.extra_info.update(shape=shape, implementation=impl, device=str(DEVICE), dtype=str(DTYPE),
                                flops=3.5 * forward_flops(shape, lq, lk))
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def run():
        out = gdpa(*leaves, **kw)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        _sync()
        return grads

    grads = benchmark(run)
    assert all(g.shape == t.shape and torch.isfinite(g).all() for g, t in zip(grads, leaves))


# ---- the kernels suite itself (plain tests, not benchmarks) ---------------------------------------
def test_kernels_suite_runs_and_writes_json(tmp_path):
    from click.testing import CliRunner

    from kunbench.cli import main
    from kunbench.results import load_many

    res = CliRunner().invoke(main, ["run", "--suite", "kernels", "--device", "cpu", "--repeat", "2",
                                    "--set", "kernels.warmup=0",
                                    "--set", "kernels.shapes=[pffn_small, seed_small, self_window_small]",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (saved,) = load_many([tmp_path])  # validated as a kunbench result on the way in
    assert Path(saved["_source"]).name.startswith("suite-kernels-")
    assert saved["kind"] == "suite" and saved["suite"] == "kernels" and saved["environment"]
    rows = saved["extra"]["rows"]
    eager = [r for r in rows if r["impl"] == "eager"]
    assert len(eager) == 6 and all(r["latency_ms"] > 0 and r["tflops"] > 0 for r in eager)
    assert all(r["max_abs_err"] < 1e-5 and r["speedup_vs_eager"] == 1.0 for r in eager)
    assert {r["pass"] for r in eager} == {"fwd", "fwd+bwd"}
    # fwd+bwd is credited with the models' training multiplier, not a kernel-specific one
    fwd = {r["shape"]: r["flops"] for r in eager if r["pass"] == "fwd"}
    assert all(r["flops"] == pytest.approx(TRAINING_FLOPS_MULTIPLIER * fwd[r["shape"]])
               for r in eager if r["pass"] == "fwd+bwd")
    triton_rows = [r for r in rows if r["impl"] == "triton"]
    assert triton_rows and all(r["status"].startswith("skipped") for r in triton_rows)
    names = {(m["backend"], m["name"]) for m in saved["metrics"]}
    assert ("eager", "latency_ms") in names and ("eager", "tflops") in names and ("eager", "pct_peak") in names
    assert saved["tables"][0]["rows"] and all(r["impl"] != "triton" for r in saved["tables"][0]["rows"])


def test_kernels_suite_rejects_unknown_names(tmp_path):
    from click.testing import CliRunner

    from kunbench.cli import main

    res = CliRunner().invoke(main, ["run", "--suite", "kernels", "--device", "cpu", "--set", "kernels.shapes=[nope]",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 2 and "kernels.shapes: unknown value 'nope'" in res.output
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=[s["name"] for s in CPU_SHAPES])
def test_chunked_reference_matches_one_shot(shape):
    from kunbench.suites.kernels import chunked_reference

    q, k, v, kw, _, _ = make_inputs(dict(shape, batch=7), torch.device("cpu"), torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = gdpa(*leaves, implementation="torch", **kw)
    grad = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, grad)
    got_out, got = chunked_reference(q, k, v, kw, grad, chunk=3)
    torch.testing.assert_close(got_out, out.detach())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
