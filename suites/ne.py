"""ne: train and evaluate each backend on the same data; NE, AUC, log loss, calibration, oracle NE,
gap closed, and NE relative to a baseline backend with its noise.

Noise (docs/measurement.md): with `--repeat N` (N >= 2) each backend trains N times with seeds 0..N-1
and the spread is the standard deviation over seeds (relative NE is paired by seed). With one
repeat the spread is a bootstrap over eval rows (200 resamples; the relative change resamples the
same rows for both models, so it is paired).

Options: ne.baseline=NAME (default: interformer when measured, else the first backend),
ne.bootstrap=N. Trains: runs under torchrun (DDP); world size is recorded.
"""

from __future__ import annotations

from typing import Any

from kunbench.errors import KunbenchError
from kunbench.results import measurement
from kunbench.stats import bootstrap_ne, mean, std
from kunbench.suites.context import SuiteContext, resolve_backend, world_note
from kunbench.suites.training import train_and_predict
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "ne"


def run(ctx: SuiteContext) -> SuiteOutput:
    backends = ctx.backends()
    if not backends:
        raise KunbenchError("no backends to measure")
    repeats = ctx.repeats(1)
    baseline = ctx.suite_option("baseline", "interformer" if "interformer" in backends else backends[0])
    if baseline not in backends:
        raise KunbenchError(f"ne.baseline={baseline!r} is not one of the backends run ({', '.join(backends)})")
    raw_boot = ctx.suite_option("bootstrap", 200)
    try:
        n_boot = int(raw_boot)
    except (TypeError, ValueError):
        n_boot = -1
    if n_boot < 0 or str(raw_boot) != str(n_boot):
        raise KunbenchError(f"ne.bootstrap must be an integer >= 0 (0 = no spread), got {raw_boot!r}")
    runs: dict[str, list] = {}
    configs: dict[str, Any] = {}
    for b in backends:
        built = resolve_backend(ctx, b)
        configs[b] = {"preset": built.preset, "config": _asdict(built.config)}
        for r in range(repeats):
            ctx.log(f"ne: training {b} ({built.preset}) seed {r} ...")
            runs.setdefault(b, []).append(train_and_predict(ctx, built, seed=r, label=f"ne train {b} seed {r}"))
    out = SuiteOutput(backends=backends, config={"backends": configs, "repeats": repeats, "baseline": baseline,
                                                 "train": _asdict(runs[backends[0]][0].train_config)})
    rows = []
    base_runs = runs.get(baseline)
    for b in backends:
        rs = runs[b]
        mets = [r.metrics() for r in rs]
        spreads: dict[str, float | None] = {}
        spread_kind = f"std over {repeats} seeds"
        if repeats >= 2:
            for k in ("ne", "auc", "logloss", "calibration", "gap_closed", "expected_ne", "expected_gap_closed"):
                spreads[k] = std(m[k] for m in mets)
        else:
            boot = bootstrap_ne(rs[0].labels, rs[0].probs, n_boot=n_boot)
            spreads["ne"] = boot["ne_std"]
            spread_kind = f"bootstrap std over eval rows ({n_boot} resamples)"
        row: dict[str, Any] = {"backend": b, "preset": rs[0].preset}
        for k, unit, better in (("ne", "", "lower"), ("auc", "", "higher"), ("logloss", "", "lower"),
                                ("calibration", "", "none"), ("oracle_ne", "", "none"),
                                ("gap_closed", "", "higher"), ("expected_ne", "", "lower"),
                                ("expected_gap_closed", "", "higher")):
            vals = [m[k] for m in mets]
            v = mean(vals)
            sp = spreads.get(k)
            out.measurements.append(measurement(NAME, b, rs[0].preset, k, v, unit=unit, better=better,
                                                samples=vals if repeats >= 2 else None, spread=sp,
                                                spread_kind=spread_kind if sp is not None else None,
                                                telemetry=rs[0].telemetry if k == "ne" else None))
            row[k] = v
            row[k + "_spread"] = sp
        flops = mean(r.flops_per_example for r in rs)
        out.measurements.append(measurement(NAME, b, rs[0].preset, "fwd_flops_per_example", flops, unit="FLOP",
                                            better="none"))
        out.measurements.append(measurement(NAME, b, rs[0].preset, "params", rs[0].params, better="none"))
        tq = [r.train.examples_per_s for r in rs]
        out.measurements.append(measurement(NAME, b, rs[0].preset, "train_qps_loader", mean(tq), unit="ex/s",
                                            better="higher", samples=tq if repeats >= 2 else None,
                                            note="end-to-end with the Parquet loader (qps suite: model only)"))
        row.update({"flops": flops, "params": rs[0].params, "train_qps": mean(tq),
                    "steps": rs[0].train.steps, "examples": rs[0].train.examples})
        # relative NE vs the baseline
        if base_runs is not None and b != baseline:
            rels = [100.0 * (r.eval.ne - br.eval.ne) / br.eval.ne for r, br in zip(rs, base_runs)]
            if repeats >= 2:
                rel_sp, kind = std(rels), f"std over {repeats} seeds (paired)"
            else:
                boot = bootstrap_ne(rs[0].labels, rs[0].probs, base_runs[0].probs, n_boot=n_boot)
                rel_sp, kind = boot["rel_pct_std"], f"paired bootstrap over eval rows ({n_boot})"
            rel = mean(rels)
            out.measurements.append(measurement(NAME, b, rs[0].preset, "relative_ne_pct", rel, unit="%",
                                                better="lower", samples=rels if repeats >= 2 else None,
                                                spread=rel_sp, spread_kind=kind, baseline=baseline))
            row["rel"] = rel
            row["rel_spread"] = rel_sp
            row["verdict"] = _verdict(rel, rel_sp)
        elif b == baseline:
            row["verdict"] = "baseline"
        rows.append(row)
    out.tables.append({
        "title": f"ne: quality on the same data (relative NE vs {baseline}; ± = {spread_kind_text(repeats)})",
        "columns": [
            {"key": "backend", "header": "backend"}, {"key": "preset", "header": "preset"},
            {"key": "ne", "header": "NE", "fmt": ".5f", "pm": "ne_spread"},
            {"key": "rel", "header": f"ΔNE % vs {baseline}", "fmt": "+.3f", "pm": "rel_spread"},
            {"key": "verdict", "header": "vs noise"},
            {"key": "auc", "header": "AUC", "fmt": ".4f"}, {"key": "calibration", "header": "calib.", "fmt": ".3f"},
            {"key": "oracle_ne", "header": "oracle NE", "fmt": ".5f"},
            {"key": "gap_closed", "header": "gap closed", "fmt": ".3f"},
            {"key": "expected_gap_closed", "header": "exp. gap", "fmt": ".3f"},
            {"key": "flops", "header": "fwd FLOPs/ex", "fmt": ",.0f"}, {"key": "params", "header": "params", "fmt": ","},
            {"key": "train_qps", "header": "train ex/s (loader)", "fmt": ",.0f"},
            {"key": "steps", "header": "steps", "fmt": ","},
        ],
        "label_columns": 2,
        "rows": rows,
        "notes": [world_note(ctx), *ctx.oracle_notes(),
                  "vs noise: 'within noise' when |ΔNE| < 2 x its spread"],
    })
    out.dataset = ctx.dataset_info()
    return out


def spread_kind_text(repeats: int) -> str:
    return f"std over {repeats} seeds" if repeats >= 2 else "bootstrap std over eval rows"


def _verdict(rel: float | None, spread: float | None) -> str:
    if rel is None:
        return "n/a"
    if spread is None:
        return "better" if rel < 0 else "worse"
    if abs(rel) < 2 * spread:
        return "within noise"
    return "better" if rel < 0 else "worse"


def _asdict(obj: Any) -> Any:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


SUITE = SuiteSpec(NAME, "Train + eval each backend on the same data: NE, AUC, calibration, oracle NE, gap closed, "
                        "relative NE vs a baseline with noise", run, data_parallel=True,
                  options=('baseline', 'bootstrap'))
