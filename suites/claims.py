"""claims: which architecture captures which kind of history signal.

For each history term of the generator, one dataset is generated with that term on (at
`claims.strength`), the context terms (`context`, `cross`) on at a lower strength, and every other
history term at 0. The signal probe gives the dataset's ceilings per view of a row; every backend
trains on it with the suites' training loop. The matrix: rows = terms, columns = each backend's
expected gap closed, then the probe ceilings (context, pooled_last_64, unordered, merged_last_256,
exact, and the term's own view where the probe names one in TERM_VIEWS).

Read a row against its `context` ceiling: that much every backend can get from the context
fields alone. What a backend closes above it came from the history term.

Options (claims.KEY=V):
    rows=[terms]        history terms to run (default: all, in the generator's order)
    strength            the history term's strength (1.0)
    context_strength    context and cross strength (0.25; `preset` = the data preset's 0.5)
    base_ctr            0.2 in the reduced run, the preset's (3%) with --full; `preset` to keep it
    data_rows           rows per dataset (reduced: 57344, 8192 of them eval; --full: the small preset's)
    probe_rows          rows per split the probe reads (default: all)
data.KEY=V applies to every term's dataset, except the history strengths, which the suite owns.
--data is ignored: the suite makes its own datasets (cached, so a rerun reuses them).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any


from kunbench.errors import KunbenchError
from kunbench.results import measurement
from kunbench.stats import bootstrap_expected_ne, mean, std
from kunbench.suites.context import (FULL_DATA_PRESET, QUICK_DATA_PRESET, SuiteContext, quick_data_sets,
                                     resolve_backend, str_list, world_note)
from kunbench.suites.training import train_and_predict
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "claims"
CONTEXT_TERMS = ("context", "cross")
DEFAULT_STRENGTH = 1.0
# context and cross at 0.25 each: 1/8 of the logit variance of a strength-1 history term, so the
# history term dominates the label and the context ceiling stays low (about 0.1 on tiny)
DEFAULT_CONTEXT_STRENGTH = 0.25
# reduced run only: at the presets' 3% CTR one pass over 24k rows (~700 clicks) learns almost
# nothing of any term; 20% gives each row ~5x the information (p(1-p))
QUICK_BASE_CTR = 0.2
# reduced run: ten datasets x three backends must fit in 15 minutes on 2 CPU cores, so fewer train
# rows than the ablation's 64k; the same 8k eval rows (expected NE has no label noise)
QUICK_CLAIMS_DATA_SETS = quick_data_sets(49152, 8192)
POOL_K = 64
MERGE_T = 256
N_BOOT = 200


def history_terms() -> list[str]:
    """History terms in the generator's order."""
    from kunbench.generators.signal import HISTORY_TERMS

    return list(HISTORY_TERMS)


def shown_views() -> list[str]:
    return ["context", f"pooled_last_{POOL_K}", "unordered", f"merged_last_{MERGE_T}", "exact"]


def term_views() -> dict[str, str]:
    from kunbench.generators.probe import TERM_VIEWS

    return dict(TERM_VIEWS)


# ---- options -------------------------------------------------------------------------------------
def _number(value: Any, key: str, *, lo: float, integer: bool = False) -> float | int:
    if isinstance(value, bool):
        raise KunbenchError(f"{key}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise KunbenchError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(x) or x < lo:
        raise KunbenchError(f"{key}: expected a number >= {lo:g}, got {value!r}")
    if integer:
        if not x.is_integer():
            raise KunbenchError(f"{key}: expected an integer, got {value!r}")
        return int(x)
    return x


def _optional(ctx: SuiteContext, key: str, default: Any, parse) -> tuple[Any, bool]:
    """(value, given): `preset` (or none) means the data preset's own value."""
    given = ctx.suite_option(key, None) is not None
    raw = ctx.suite_option(key, default)
    if raw is None or str(raw).lower() in ("preset", "none"):
        return None, given
    return parse(raw, f"{NAME}.{key}"), given


def settings(ctx: SuiteContext) -> dict[str, Any]:
    """Validated options (one-line errors, before any work)."""
    terms = history_terms()
    rows_opt = ctx.suite_option("rows", None)
    rows = terms if rows_opt is None else str_list(rows_opt, f"{NAME}.rows", terms)
    rows = [t for t in terms if t in rows]  # generator order, no duplicates
    strength = _number(ctx.suite_option("strength", DEFAULT_STRENGTH), f"{NAME}.strength", lo=0.0)
    if strength <= 0:
        raise KunbenchError(f"{NAME}.strength: must be > 0 (0 switches the term off), got {strength:g}")

    def ctr(v, key):
        x = _number(v, key, lo=0.0)
        if not 0 < x < 1:
            raise KunbenchError(f"{key}: expected a rate in (0, 1) or 'preset', got {v!r}")
        return x

    context_strength, cs_given = _optional(ctx, "context_strength", DEFAULT_CONTEXT_STRENGTH,
                                           lambda v, k: _number(v, k, lo=0.0))
    base_ctr, ctr_given = _optional(ctx, "base_ctr", None if ctx.full else QUICK_BASE_CTR, ctr)
    data_rows, rows_given = _optional(ctx, "data_rows", None, lambda v, k: _number(v, k, lo=100, integer=True))
    probe_rows, _ = _optional(ctx, "probe_rows", None, lambda v, k: _number(v, k, lo=1, integer=True))
    return {"rows": rows, "strength": float(strength), "context_strength": context_strength,
            "base_ctr": base_ctr, "data_rows": data_rows, "probe_rows": probe_rows,
            "given": sorted(k for k, g in (("context_strength", cs_given), ("base_ctr", ctr_given),
                                           ("data_rows", rows_given)) if g)}


def term_sets(ctx: SuiteContext, s: dict[str, Any], term: str, all_terms: list[str]) -> tuple[str, dict[str, Any]]:
    """(data preset, generator overrides) of `term`'s dataset. Order: the suite's defaults, then
    data.*, then claims.* options given on the command line, then the history strengths, so no
    --set can switch a second history term back on."""
    preset = FULL_DATA_PRESET if ctx.full else QUICK_DATA_PRESET
    own = {  # suite option -> the generator keys it sets
        "data_rows": {"rows": s["data_rows"]} if s["data_rows"] is not None else {},
        "base_ctr": {"base_ctr": s["base_ctr"]} if s["base_ctr"] is not None else {},
        "context_strength": ({f"signal.{t}": s["context_strength"] for t in CONTEXT_TERMS}
                             if s["context_strength"] is not None else {}),
    }
    sets: dict[str, Any] = {} if ctx.full else dict(QUICK_CLAIMS_DATA_SETS)
    for opt, kv in own.items():
        if opt not in s["given"]:
            sets.update(kv)
    sets.update(ctx.data_sets)
    for opt, kv in own.items():
        if opt in s["given"]:
            sets.update(kv)
    for t in all_terms:
        sets[f"signal.{t}"] = s["strength"] if t == term else 0.0
    return preset, sets


def check_datasets(ctx: SuiteContext, s: dict[str, Any], all_terms: list[str]) -> None:
    """Build every term's generator config up front: a bad data.* key fails before any work."""
    from kunbench.generators.config import build_config

    for term in s["rows"]:
        preset, sets = term_sets(ctx, s, term, all_terms)
        try:
            build_config(preset, sets=sets)
        except KunbenchError as exc:
            raise KunbenchError(f"claims: the {term} dataset: {exc}") from None


def _dataset(ctx: SuiteContext, preset: str, sets: dict[str, Any]) -> Path:
    from kunbench.cache import default_dataset

    d = ctx.dist
    path = default_dataset(preset, sets=sets, log=ctx.log) if d.is_main else None
    d.barrier()
    if not d.is_main:
        path = default_dataset(preset, sets=sets)
    return path


# ---- the suite ------------------------------------------------------------------------------------
def run(ctx: SuiteContext) -> SuiteOutput:
    from kunbench.generators.probe import probe

    s = settings(ctx)
    all_terms = history_terms()
    check_datasets(ctx, s, all_terms)
    terms = s["rows"]
    backends = ctx.backends()
    if not backends:
        raise KunbenchError("claims: no backends to measure")
    repeats = ctx.repeats(1)
    notes: list[str] = []
    if ctx.opts.data is not None:
        notes.append(f"--data {ctx.opts.data} ignored: claims generates one dataset per term")
    built = {}
    for b in backends:
        try:
            built[b] = resolve_backend(ctx, b)
        except KunbenchError as exc:
            notes.append(f"{b} skipped: {exc}")
    if not built:
        raise KunbenchError("claims: no backend could be configured")
    backends = list(built)
    tviews = term_views()
    out = SuiteOutput(backends=backends, config={
        "settings": dict(s), "repeats": repeats,
        "probe": {"pool_k": POOL_K, "merge_t": MERGE_T}, "term_views": tviews,
        "backends": {b: {"preset": x.preset, "config": dataclasses.asdict(x.config)} for b, x in built.items()},
        "terms": {}})
    results: dict[str, dict[str, Any]] = {}
    datasets: dict[str, Any] = {}
    t0 = time.perf_counter()
    n_steps = len(terms)
    for i, term in enumerate(terms):
        tag = f"claims [{i + 1}/{n_steps}] {term}"
        preset, sets = term_sets(ctx, s, term, all_terms)
        ctx.log(f"{tag}: dataset ({preset}, " + (f"{sets['rows']} rows" if "rows" in sets else "the preset's rows")
                + ") ...")
        root = _dataset(ctx, preset, sets)
        tctx = dataclasses.replace(ctx, _dataset=root)  # shares log, windows and notes with ctx
        info = tctx.dataset_info()
        datasets[term] = info
        out.config["terms"][term] = {"data_preset": preset, "data_sets": sets}
        res: dict[str, Any] = {"ceilings": {}, "probe": None, "runs": {}}
        pr = None
        if ctx.is_main:
            ctx.log(f"{tag}: signal probe ...")
            try:
                pr = probe(root, pool_k=POOL_K, merge_t=MERGE_T,
                           **({"max_rows": s["probe_rows"]} if s["probe_rows"] is not None else {}))
            except KunbenchError as exc:  # the backends' cells still stand without ceilings
                notes.append(f"{term}: no probe ceilings: {exc}")
        if pr is not None:
            res["ceilings"] = {v.view: v.expected_gap_closed for v in pr.views}
            res["probe"] = {"oracle_expected_ne": pr.oracle_expected_ne, "max_abs_p_error": pr.max_abs_p_error,
                            "train_rows": pr.train_rows, "eval_rows": pr.eval_rows,
                            "views": [dataclasses.asdict(v) for v in pr.views]}
            if pr.max_abs_p_error > 1e-6:
                notes.append(f"{term}: the probe recomputed p_true only to {pr.max_abs_p_error:.2g}; "
                             f"its ceilings may not describe this dataset")
        for b in backends:
            x = built[b]
            ctx.log(f"{tag}: train {b} ({x.preset}) ...")
            try:
                runs = [train_and_predict(tctx, x, seed=r, label=f"claims {term} {b} seed {r}")
                        for r in range(repeats)]
            except KunbenchError as exc:  # e.g. a diverged run: one cell must not sink the matrix
                notes.append(f"{term} x {b} failed: {exc}")
                ctx.log(f"{tag}: {b} failed: {exc}")
                continue
            gaps = [r.metrics()["expected_gap_closed"] for r in runs]
            if repeats >= 2:
                spread, kind = std(gaps), f"std over {repeats} seeds"
            elif runs[0].p_true is not None:
                spread, kind = bootstrap_expected_ne(runs[0].p_true, runs[0].probs, n_boot=N_BOOT)["gap_std"], \
                    f"bootstrap std over eval rows ({N_BOOT} resamples)"
            else:
                spread, kind = None, None
            res["runs"][b] = {"runs": runs, "gap": mean(gaps), "gaps": gaps, "spread": spread, "kind": kind}
            g = res["runs"][b]["gap"]
            ctx.log(f"{tag}: {b} expected gap closed {g:.3f}, {time.perf_counter() - t0:.0f} s elapsed"
                    if g is not None else f"{tag}: {b} expected gap closed n/a")
        results[term] = res

    _report(ctx, out, s, terms, backends, results, tviews, repeats, notes)
    out.dataset = {"per_term": datasets}
    out.extra["seconds"] = time.perf_counter() - t0
    return out


def _report(ctx: SuiteContext, out: SuiteOutput, s: dict[str, Any], terms: list[str], backends: list[str],
            results: dict[str, dict[str, Any]], tviews: dict[str, str], repeats: int, notes: list[str]) -> None:
    wanted = shown_views()
    present = {v for r in results.values() for v in r["ceilings"]}
    views = [v for v in wanted if v in present]
    absent = [v for v in wanted if v not in present]
    show_term_view = any(tviews.get(t) in results[t]["ceilings"] for t in terms if t in results)
    rows, above_rows, extra_rows = [], [], []
    for term in terms:
        res = results.get(term)
        if res is None:
            continue
        ceil = res["ceilings"]
        ctx_ceiling = ceil.get("context")
        row: dict[str, Any] = {"term": term}
        above: dict[str, Any] = {"term": term}
        for b in backends:
            cell = res["runs"].get(b)
            if cell is None:
                continue
            row[b], row[f"{b}__spread"] = cell["gap"], cell["spread"]
            if cell["gap"] is not None and ctx_ceiling is not None:
                above[b] = cell["gap"] - ctx_ceiling
            r0 = cell["runs"][0]
            out.measurements.append(measurement(
                NAME, b, term, "expected_gap_closed", cell["gap"], better="higher", spread=cell["spread"],
                spread_kind=cell["kind"], samples=cell["gaps"] if repeats >= 2 else None, telemetry=r0.telemetry,
                preset=r0.preset, strength=s["strength"],
                note="p_true as soft labels: no label-sampling noise"))
        for v in views:
            row[f"view:{v}"] = ceil.get(v)
        tv = tviews.get(term)
        if show_term_view:
            row["term_view"] = tv if tv in ceil else None
            row["view:term"] = ceil.get(tv) if tv else None
        for v, value in ceil.items():
            out.measurements.append(measurement(NAME, "probe", term, f"ceiling_{v}", value, better="none",
                                                view=v, strength=s["strength"],
                                                note="signal probe: best expected gap closed from this view"))
        if ctx_ceiling is not None and ceil.get("exact") is not None:
            above["history_share"] = ceil["exact"] - ctx_ceiling
        rows.append(row)
        above_rows.append(above)
        extra_rows.append({"term": term, "ceilings": ceil, "term_view": tv, "probe": res["probe"],
                           **{f"gap:{b}": res["runs"][b]["gap"] for b in backends if b in res["runs"]}})

    gap_kind = (f"std over {repeats} seeds" if repeats >= 2
                else f"bootstrap std of the eval rows ({N_BOOT} resamples)")
    cols = [{"key": "term", "header": "history term"}]
    cols += [{"key": b, "header": b, "fmt": ".3f", "pm": f"{b}__spread"} for b in backends]
    cols += [{"key": f"view:{v}", "header": f"⌈{v}⌉", "fmt": ".3f"} for v in views]
    if show_term_view:
        cols += [{"key": "term_view", "header": "term view"}, {"key": "view:term", "header": "⌈term view⌉",
                                                               "fmt": ".3f"}]
    presets = sorted({c["runs"][0].preset for r in results.values() for c in r["runs"].values()})
    data_desc = (f"{FULL_DATA_PRESET if ctx.full else QUICK_DATA_PRESET} data preset"
                 + (f", {s['data_rows']} rows" if s["data_rows"] else "")
                 + f"; backend presets: {', '.join(presets) or 'n/a'}")
    table_notes = [
        f"each row: a dataset with that history term at strength {s['strength']:g}, context and cross at "
        + ("their preset strengths" if s["context_strength"] is None else f"{s['context_strength']:g}")
        + ", every other history term off; base CTR "
        + ("of the preset" if s["base_ctr"] is None else f"{s['base_ctr']:g}"),
        "backend columns: expected gap closed on the eval split (p_true as soft labels), ± = " + gap_kind,
        "⌈view⌉ columns: the signal probe's ceiling for that view of the row (best expected gap closed of a "
        "logistic readout on the exact per-row statistics the view keeps)",
        "read each row against ⌈context⌉: every backend could reach that from the context fields alone; what a "
        "backend closes above it came from the history term, up to ⌈exact⌉ - ⌈context⌉. A cell below "
        "⌈context⌉ says the backend has not learned even the context part at this budget",
        world_note(ctx) + "; " + data_desc,
    ]
    if s["probe_rows"] is not None:
        table_notes.append(f"probe fit on at most {s['probe_rows']} rows per split; the backends are scored on "
                           f"the whole eval split")
    if absent:
        table_notes.append(f"views this probe does not offer (columns left out): {', '.join(absent)}")
    out.tables.append({"title": "claims: expected gap closed per history term (rows) and backend, beside the "
                               "probe's ceilings ⌈view⌉",
                       "columns": cols, "rows": rows, "label_columns": 1, "notes": table_notes})
    acols = [{"key": "term", "header": "history term"}]
    acols += [{"key": b, "header": b, "fmt": "+.3f"} for b in backends]
    acols.append({"key": "history_share", "header": "⌈exact⌉ - ⌈context⌉", "fmt": ".3f"})
    out.tables.append({"title": "claims: gap closed above the context-only ceiling (the part earned from the "
                                "history term)",
                       "columns": acols, "rows": above_rows, "label_columns": 1,
                       "notes": ["a backend near the last column captures the term; near 0 it learned little "
                                 "of it; below 0 it has not learned even the context part, so the row says "
                                 "little about the term (more data: claims.data_rows, --full)"]})
    out.notes += notes
    out.notes.append("how to read claims: the ⌈context⌉ ceiling is the share of the gap a backend can close "
                     "from the context fields alone; what it closes above that it learned from the row's "
                     "history term. Compare that with ⌈exact⌉ - ⌈context⌉ (all of the term) and with the "
                     "ceiling of the view closest to the backend's input (Wukong: pooled_last_64; InterFormer: "
                     "merged_last_256): below its view's ceiling is missing learning, not missing information")
    out.extra["claims_rows"] = extra_rows


SUITE = SuiteSpec(NAME, "One dataset per history term (the others off): each backend's expected gap closed beside "
                        "the signal probe's ceilings; which architecture captures which signal", run,
                  data_parallel=True,
                  options=("rows", "strength", "context_strength", "base_ctr", "data_rows", "probe_rows"))
