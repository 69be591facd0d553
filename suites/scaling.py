"""scaling: each backend at five or more sizes spanning at least 1.5 decades of forward FLOPs; fit
NE(C) = NE_0 - eta ln(C / C_0) (C = forward FLOPs/example, C_0 = their geometric mean) by least
squares; report eta with a 95 % t interval, R^2, and eta / eta_InterFormer, the Kunlun paper's
"scaling efficiency" (it reports Kunlun at about 2x InterFormer). `kunbench report --plot DIR`
draws the curve; the run itself writes the PNG next to the result when plotting is available.

Sizes: a width ladder over the backend's preset (after --set overrides): the keys the backend
declares as its widths (`BackendSpec.width_keys`) are multiplied by the factor
(`BackendSpec.scale`: d rounded to a multiple of 2 x heads, MLP tuples element-wise). Factors
default to 0.25, 0.5, 1, 2, 4 (scaling.factors=[...] to change). The FLOP span actually reached is
checked and stated; a span under 1.5 decades is flagged in the notes. Each size trains at the
dense learning rate times factor^-lr_exponent (scaling.lr_exponent, default 0.5; 0 keeps one rate).

The fit is on expected NE (p_true as soft labels), not on NE of the sampled clicks: the sizes
share the eval rows, and at a 3 % CTR the label draw alone moves NE by about as much as the whole
ladder does, so a fit on sampled NE mostly fits noise. Sampled NE stays in the per-size table.
The reduced run trains on its own larger dataset (QUICK_DATA_SETS_BY_SUITE in suites/context.py)
because with too few fresh rows the widest models stop improving and bend the curve. The ± per
size is a bootstrap over eval rows (or the std over seeds with --repeat N); it does not include
training-seed variance, which the fit's residuals do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.results import measurement
from kunbench.stats import bootstrap_expected_ne, bootstrap_ne, fit_log_compute, mean, std
from kunbench.suites.context import SuiteContext, resolve_backend, world_note
from kunbench.suites.training import train_and_predict
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "scaling"
DEFAULT_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
# Adam's best dense learning rate falls as a model widens (the width rules of muP); one pass at the
# preset's rate over-steps the wide sizes. Measured on the tiny presets (one seed, 160k rows):
# Kunlun x2 expected NE 0.9404 at lr 3e-3 and 0.9390 at 1.5e-3; InterFormer's five sizes went
# from R^2 0.77 at one rate to 0.81 with lr x factor^-0.5.
DEFAULT_LR_EXPONENT = 0.5
MIN_DECADES = 1.5


def run(ctx: SuiteContext) -> SuiteOutput:
    raw = ctx.suite_option("factors", list(DEFAULT_FACTORS))
    try:
        factors = [float(x) for x in (raw if isinstance(raw, (list, tuple)) else str(raw).strip("[]").split(","))]
    except ValueError:
        raise KunbenchError(f"scaling.factors: expected numbers, got {raw!r}") from None
    if not factors or any(f <= 0 for f in factors):
        raise KunbenchError(f"scaling.factors: expected positive numbers, got {raw!r}")
    lr_exponent = ctx.number_option("lr_exponent", DEFAULT_LR_EXPONENT, minimum=0.0, maximum=2.0, strict=False)
    if len(factors) < 5:
        ctx.notes.append(f"only {len(factors)} sizes per backend (the suite's contract is at least 5)")
    backends = ctx.backends()
    if not backends:
        raise KunbenchError("no backends to measure")
    repeats = ctx.repeats(1)
    out = SuiteOutput(backends=backends, config={"factors": factors, "repeats": repeats, "backends": {},
                                                 "lr_exponent": lr_exponent})
    data: dict[str, Any] = {}
    table_rows = []
    for b in backends:
        base = resolve_backend(ctx, b)
        points = []
        cfgs = {}
        for f in factors:
            try:
                built = resolve_backend(ctx, b, extra_sets=base.spec.scale(base.config, f))
            except KunbenchError as exc:
                ctx.notes.append(f"{b} x{f:g}: skipped ({exc})")
                continue
            label = f"x{f:g}"
            cfgs[label] = dataclasses.asdict(built.config)
            flops, params, runs, mets = [], None, [], []
            for r in range(repeats):
                ctx.log(f"scaling: {b} {label} seed {r} ...")
                tr = train_and_predict(ctx, built, seed=r, label=f"scaling {b} {label} seed {r}",
                                       lr_scale=f ** -lr_exponent)
                runs.append(tr)
                mets.append(tr.metrics())
                flops.append(tr.flops_per_example)
                params = tr.params
            nes = [m["ne"] for m in mets]
            enes = [m["expected_ne"] for m in mets]
            has_expected = all(v is not None for v in enes)
            ne = mean(nes)
            ene = mean(enes) if has_expected else None
            if repeats >= 2:
                sp, esp = std(nes), (std(enes) if has_expected else None)
            else:
                t0 = runs[0]
                sp = bootstrap_ne(t0.labels, t0.probs)["ne_std"]
                esp = bootstrap_expected_ne(t0.p_true, t0.probs)["ne_std"] if has_expected else None
            c = mean(flops)
            gap = mean(m["gap_closed"] for m in mets)
            egap = mean(m["expected_gap_closed"] for m in mets)
            ctx.log(f"scaling: {b} {label}: {c:,.0f} FLOPs/ex, NE {ne:.5f}"
                    + (f", expected NE {ene:.5f}" if ene is not None else ""))
            points.append({"label": label, "factor": f, "lr": runs[0].train_config.lr, "flops": c, "ne": ne,
                           "ne_spread": sp,
                           "expected_ne": ene, "expected_ne_spread": esp, "params": params,
                           "gap_closed": gap, "expected_gap_closed": egap})
            kind = f"std over {repeats} seeds" if repeats >= 2 else "bootstrap std over eval rows"
            out.measurements.append(measurement(NAME, b, label, "ne", ne, better="lower", spread=sp,
                                                samples=nes if repeats >= 2 else None, spread_kind=kind,
                                                telemetry=runs[0].telemetry))
            if ene is not None:
                out.measurements.append(measurement(NAME, b, label, "expected_ne", ene, better="lower", spread=esp,
                                                    samples=enes if repeats >= 2 else None, spread_kind=kind,
                                                    note="p_true as soft labels: no label-sampling noise"))
            out.measurements.append(measurement(NAME, b, label, "fwd_flops_per_example", c, unit="FLOP",
                                                better="none"))
            out.measurements.append(measurement(NAME, b, label, "params", params, better="none"))
            table_rows.append({"backend": b, "size": label, "lr": runs[0].train_config.lr, "flops": c, "params": params,
                               "ne": ne, "ne_spread": sp,
                               "expected_ne": ene, "expected_ne_spread": esp, "gap_closed": gap,
                               "expected_gap_closed": egap})
        fit_on = "expected_ne" if points and all(p["expected_ne"] is not None for p in points) else "ne"
        if fit_on == "ne" and points:
            ctx.notes.append(f"{b}: the dataset has no p_true; NE(C) is fitted on sampled-label NE")
        fit = fit_log_compute([p["flops"] for p in points], [p[fit_on] for p in points])
        fit["on"] = fit_on
        data[b] = {"points": points, "fit": fit}
        out.config["backends"][b] = {"preset": base.preset, "sizes": cfgs}
        if fit.get("decades") is not None and fit["decades"] < MIN_DECADES:
            ctx.notes.append(f"{b}: the sizes span {fit['decades']:.2f} decades of FLOPs (< {MIN_DECADES}); "
                             f"widen scaling.factors")
    if not table_rows:
        raise KunbenchError("scaling: no backend could be sized (" + "; ".join(ctx.notes[-3:]) + ")")
    ref = data.get("interformer", {}).get("fit", {})
    fit_rows = []
    for b, entry in data.items():
        fit = entry["fit"]
        eta = fit.get("eta")
        ratio = ratio_se = None
        if eta is not None and ref.get("eta"):
            ratio = eta / ref["eta"]
            if fit.get("eta_se") is not None and ref.get("eta_se") is not None and eta != 0:
                ratio_se = abs(ratio) * math.sqrt((fit["eta_se"] / eta) ** 2 + (ref["eta_se"] / ref["eta"]) ** 2)
        fit["eta_over_interformer"] = ratio
        fit["eta_over_interformer_se"] = ratio_se
        ci = fit.get("eta_ci")
        fit_rows.append({"backend": b, "on": fit.get("on"), "n": fit.get("n"), "decades": fit.get("decades"),
                         "eta": eta,
                         "eta_ci": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "n/a", "r2": fit.get("r2"),
                         "ne0": fit.get("ne0"), "c0": fit.get("c0"), "ratio": ratio, "ratio_se": ratio_se})
        out.measurements.append(measurement(NAME, b, "fit", "eta", eta, better="higher", spread=fit.get("eta_se"),
                                            spread_kind="standard error of the least-squares slope",
                                            eta_ci95=ci, r2=fit.get("r2"), c0=fit.get("c0"),
                                            fitted_on=fit.get("on")))
        if ratio is not None:
            out.measurements.append(measurement(NAME, b, "fit", "eta_over_interformer", ratio, better="higher",
                                                spread=ratio_se, spread_kind="delta method from the slopes' SEs"))
    spread_txt = (f"std over {repeats} seeds" if repeats >= 2
                  else "bootstrap std over eval rows (eval-sample noise only, not training-seed variance)")
    out.tables.append({"title": "scaling: NE at each size (± = NE noise)",
                       "columns": [{"key": "backend", "header": "backend"}, {"key": "size", "header": "width"},
                                   {"key": "lr", "header": "lr", "fmt": ".2g"},
                                   {"key": "flops", "header": "fwd FLOPs/ex", "fmt": ",.0f"},
                                   {"key": "params", "header": "params", "fmt": ","},
                                   {"key": "expected_ne", "header": "exp. NE", "fmt": ".5f",
                                    "pm": "expected_ne_spread"},
                                   {"key": "ne", "header": "NE (sampled)", "fmt": ".5f", "pm": "ne_spread"},
                                   {"key": "expected_gap_closed", "header": "exp. gap", "fmt": ".3f"},
                                   {"key": "gap_closed", "header": "gap closed", "fmt": ".3f"}],
                       "rows": table_rows, "label_columns": 2,
                       "notes": [world_note(ctx), *ctx.oracle_notes(), f"± = {spread_txt}",
                                 "NE (sampled): on the drawn clicks; at a 3% CTR its noise is larger than the "
                                 "differences between sizes"]})
    out.tables.append({"title": "scaling: expected NE(C) = NE_0 - eta ln(C/C_0), C_0 = geometric mean FLOPs",
                       "columns": [{"key": "backend", "header": "backend"}, {"key": "on", "header": "fit on"},
                                   {"key": "n", "header": "sizes"},
                                   {"key": "decades", "header": "FLOP decades", "fmt": ".2f"},
                                   {"key": "eta", "header": "eta", "fmt": "+.5f"},
                                   {"key": "eta_ci", "header": "eta 95% CI"}, {"key": "r2", "header": "R²", "fmt": ".3f"},
                                   {"key": "ne0", "header": "NE_0", "fmt": ".5f"},
                                   {"key": "c0", "header": "C_0 FLOPs", "fmt": ",.0f"},
                                   {"key": "ratio", "header": "eta / eta_InterFormer", "fmt": ".2f", "pm": "ratio_se"}],
                       "rows": fit_rows, "label_columns": 1,
                       "notes": ["fitted on expected NE (p_true as soft labels), so the residuals are the models', "
                                 "not the label draw's; 'fit on' says which NE each fit used",
                                 "eta > 0: NE falls as compute grows; the Kunlun paper reports Kunlun's eta at about "
                                 "2x InterFormer's"]})
    out.extra["scaling"] = data
    out.dataset = ctx.dataset_info()
    if ctx.is_main and ctx.opts.write:
        try:
            from kunbench.results.plots import plot_scaling

            plot_dir = Path(ctx.opts.out or "results")
            stamp = time.strftime("%Y%m%dT%H%M%S")
            p = plot_scaling({"extra": {"scaling": data}, "_source": stamp}, _mk(plot_dir))
            if p is not None:
                out.notes.append(f"plot: {p}")
        except KunbenchError as exc:
            out.notes.append(f"no plot: {exc}")
    return out


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


SUITE = SuiteSpec(NAME, "Each backend at >=5 sizes over >=1.5 decades of FLOPs; fit NE = NE_0 - eta ln(C/C_0), "
                        "eta CI, R^2, eta/eta_InterFormer; PNG plot", run, data_parallel=True,
                  options=('factors', 'lr_exponent'))
