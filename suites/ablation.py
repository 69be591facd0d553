"""ablation: full Kunlun, then one switch flipped per row, plus InterFormer and Wukong rows.

Rows (Kunlun config keys):
    full                        Kunlun as configured (preset + --set)
    gdpa torch                  gdpa=torch (batched matmuls; on a CPU auto already is torch: not trained twice)
    summary pma                 summary=pma          (PMA instead of HSP)
    sumkron off                 sumkron=off
    seed attention gdpa         seed_attention=gdpa  (HSP seeds pool through GDPA, not softmax)
    attention full              attention=full       (no sliding window)
    compskip off                compskip=off
    event_personalization off   event_personalization=off
    rote rope                   rote=rope
    rote none                   rote=none
    experts 1                   experts=1
    InterFormer, Wukong         the baselines at the same preset

ΔNE % compares *expected* NE (the generator's p_true as soft labels), with a paired bootstrap over
the same eval rows as its ± (or the std over seeds with --repeat). Why: at a 3 % CTR the clicks
drawn for a few thousand eval rows move NE by more than any switch does, so on sampled labels every
delta sat inside its noise bar; expected NE removes the label draw and leaves only which rows were
sampled. The bootstrap does not cover training-seed variance; --repeat N does. NE and ΔNE on the
sampled labels stay in the table as their own columns (what a real dataset would show).

Other columns: gap closed (sampled and expected), forward GFLOPs/example and ΔFLOPs %, train and
inference examples/s (in-memory source, median over windows, interleaved across rows so machine
drift hits every row alike) and Δ QPS % (interleaved: the median of each window's change against
the reference's window of the same round, ± their std), training MFU (kunbench.hardware: training FLOPs / peak), parameters; the
Kunlun paper's published deltas beside ours, converted to this table's direction (a row flips a
switch *off*, the paper reports turning it *on*).

Without a registered `kunlun` backend the Kunlun rows are skipped with a note and the deltas are
taken against InterFormer. A row whose flipped config equals the full config (the default is
already that setting) is marked so rather than trained twice.

Options (ablation.KEY=V): rows=[names] to run a subset, batch_size (throughput; 1024 on CUDA,
256 on CPU), window_s, warmup, windows.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

from kunbench.errors import KunbenchError
from kunbench.backends.gdpa_ops import resolve_gdpa
from kunbench.results import measurement
from kunbench.train.evaluate import autocast_dtype
from kunbench.hardware import device_peak, flops_convention, mfu
from kunbench.stats import bootstrap_expected_ne, bootstrap_ne, mean, std
from kunbench.suites.context import SuiteContext, build_model, resolve_backend, str_list, world_note
from kunbench.suites.throughput import ThroughputProbe, interleaved, paired_ratios
from kunbench.suites.training import same_eval_rows, train_and_predict
from kunbench.suites.registry import SuiteOutput, SuiteSpec

NAME = "ablation"
KUNLUN = "kunlun"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    backend: str
    sets: dict[str, Any]
    paper_dne: float | None = None  # percent, this row vs full Kunlun
    paper_dflops: float | None = None
    paper_dqps: float | None = None
    paper_note: str = ""


def _effective(cfg: dict[str, Any], config: Any, ctx: SuiteContext) -> dict[str, Any]:
    """A Kunlun config as it runs on this device and dataset: the GDPA kernel `auto` resolves to,
    and each event type's stream settings in place of the switches that choose them."""
    gdpa = resolve_gdpa(cfg["gdpa"], ctx.device, autocast_dtype(ctx.device, ctx.dtype)).value
    chosen = {et: dataclasses.asdict(sc) for et, sc in config.stream_configs(ctx.schema()).items()}
    drop = ("event_personalization", "stream", "streams", "stream_importance")
    return {**{k: v for k, v in cfg.items() if k not in drop}, "gdpa": gdpa, "stream_configs": chosen}


def _flip(pct_on: float) -> float:
    """The paper reports turning a feature on (x -> x(1+p)); our row turns it off: 1/(1+p) - 1."""
    return 100.0 * (1.0 / (1.0 + pct_on / 100.0) - 1.0)


ROWS: tuple[Row, ...] = (
    Row("full", KUNLUN, {}, paper_note="paper: MFU 37% (B200, Meta data)"),
    Row("gdpa torch", KUNLUN, {"gdpa": "torch"},
        paper_note="paper: fused GDPA up to 6x MFU on the PFFN module, ~3 MFU points end to end"),
    Row("summary pma", KUNLUN, {"summary": "pma"}, paper_dne=0.08, paper_note="paper: HSP +0.08% NE over PMA"),
    Row("sumkron off", KUNLUN, {"sumkron": "off"}),
    Row("seed attention gdpa", KUNLUN, {"seed_attention": "gdpa"}),
    Row("attention full", KUNLUN, {"attention": "full"}, paper_dne=0.0, paper_dflops=_flip(-29.5),
        paper_dqps=_flip(31.1), paper_note="paper: window -29.5% FLOPs, +31.1% QPS, NE neutral"),
    Row("compskip off", KUNLUN, {"compskip": "off"}, paper_dne=0.0, paper_dflops=_flip(-43.1),
        paper_dqps=_flip(35.0), paper_note="paper: CompSkip -43.1% FLOPs, +35% QPS, NE neutral"),
    Row("event_personalization off", KUNLUN, {"event_personalization": "off"}),
    Row("rote rope", KUNLUN, {"rote": "rope"}),
    Row("rote none", KUNLUN, {"rote": "none"}),
    Row("experts 1", KUNLUN, {"experts": 1}),
    Row("InterFormer", "interformer", {}, paper_note="paper: MFU 17% vs Kunlun 37%; scaling efficiency 1/2 of Kunlun"),
    Row("Wukong", "wukong", {}),
)


def _pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return 100.0 * (a - b) / b


def _ratio_pct_spread(a: float | None, sa: float | None, b: float | None, sb: float | None) -> float | None:
    """Std of 100 (a/b - 1) from independent spreads of a and b (first order)."""
    if not a or not b or (sa is None and sb is None):
        return None
    return 100.0 * (a / b) * math.sqrt(((sa or 0.0) / a) ** 2 + ((sb or 0.0) / b) ** 2)


def paper_text(row: Row) -> str:
    """The paper's deltas for this row, in this table's direction, compactly."""
    parts = []
    if row.paper_dne is not None:
        parts.append("ΔNE ≈ 0" if row.paper_dne == 0 else f"ΔNE {row.paper_dne:+.2f}%")
    if row.paper_dflops is not None:
        parts.append(f"ΔFLOPs {row.paper_dflops:+.1f}%")
    if row.paper_dqps is not None:
        parts.append(f"ΔQPS {row.paper_dqps:+.1f}%")
    if not parts:
        short = {"full": "MFU 37%", "gdpa torch": "≈ -3 MFU pts", "InterFormer": "MFU 17%, eta 1/2 of Kunlun's"}
        return short.get(row.name, "-")
    return ", ".join(parts)


def _throughput(ctx: SuiteContext, s: dict[str, Any], rows: list[Row], results: dict[str, dict[str, Any]],
                interleave: bool) -> None:
    """Train and inference examples/s of every row from the in-memory source. Interleaved: all
    models are built and warmed up first, then each window visits every row in turn, so a drift of
    the machine over the run (other processes, clocks) lands on all rows alike."""
    def probes_for(row: Row) -> dict[str, ThroughputProbe]:
        built = results[row.name]["built"]
        model = build_model(ctx, built)
        return {mode: ThroughputProbe(ctx, built, model, mode, s["batch_size"], min_window_s=s["window_s"],
                                      warmup=s["warmup"], label=f"ablation {row.name} {mode}")
                for mode in ("train", "infer")}

    if interleave:
        ctx.log(f"ablation: throughput of {len(rows)} rows at batch {s['batch_size']}, "
                f"{s['windows']} interleaved windows ...")
        tps = interleaved({row.name: probes_for(row) for row in rows}, s["windows"])
        for row in rows:
            results[row.name]["tp"] = tps[row.name]
        return
    for row in rows:
        ctx.log(f"ablation: throughput {row.name} bs={s['batch_size']} ...")
        probes = probes_for(row)
        for p in probes.values():
            for _ in range(s["windows"]):
                p.window()
        results[row.name]["tp"] = {m: p.result() for m, p in probes.items()}
        del probes


def settings(ctx: SuiteContext) -> dict[str, Any]:
    big = ctx.full or ctx.device.type == "cuda"
    # 1024-row throughput batches only on a GPU: on one CPU core a 1024-row Kunlun training step
    # takes seconds, and 13 rows x 2 modes x warm-up would outlast the training itself
    gpu = ctx.device.type == "cuda"
    return {"batch_size": ctx.number_option("batch_size", 1024 if gpu else 256, integer=True),
            "window_s": ctx.number_option("window_s", 2.0 if ctx.full else 0.4, maximum=3600),
            "warmup": ctx.number_option("warmup", 10 if big else 2, integer=True, strict=False),
            "windows": ctx.number_option("windows", 3, integer=True),
            "interleave": ctx.bool_option("interleave", not ctx.full),
            "rows": ctx.suite_option("rows", None)}


def run(ctx: SuiteContext) -> SuiteOutput:
    from kunbench.backends.registry import available_backends

    s = settings(ctx)
    avail = set(available_backends())
    rows = list(ROWS)
    if s["rows"]:
        wanted = str_list(s["rows"], "ablation.rows", [r.name for r in ROWS])
        rows = [r for r in ROWS if r.name in wanted or r.name == "full"]
    if ctx.opts.backends:
        rows = [r for r in rows if r.backend in ctx.opts.backends]
    notes: list[str] = []
    missing = sorted({r.backend for r in rows if r.backend not in avail})
    for m in missing:
        notes.append(f"{m} rows skipped: backend not registered")
    rows = [r for r in rows if r.backend in avail]
    if not rows:
        raise KunbenchError("ablation: no row can run (no registered backend among kunlun, interformer, wukong)")
    ref_name = "full" if any(r.name == "full" for r in rows) else rows[0].name

    repeats = ctx.repeats(1)
    peak = device_peak(ctx.device, ctx.dtype)
    out = SuiteOutput(backends=sorted({r.backend for r in rows}),
                      config={"settings": s, "repeats": repeats, "rows": {}, "peak": peak})
    results: dict[str, dict[str, Any]] = {}
    full_cfg = None
    t_start = time.perf_counter()
    for i, row in enumerate(rows):
        try:
            built = resolve_backend(ctx, row.backend, extra_sets=row.sets)
        except KunbenchError as exc:
            notes.append(f"row {row.name!r} skipped: {exc}")
            continue
        cfg = dataclasses.asdict(built.config)
        out.config["rows"][row.name] = {"backend": row.backend, "preset": built.preset, "sets": row.sets, "config": cfg}
        if row.backend == KUNLUN:  # compare what runs here: the kernels and each stream's settings
            cfg = _effective(cfg, built.config, ctx)
        if row.backend == KUNLUN and row.name == "full":
            full_cfg = cfg
        elif row.backend == KUNLUN and full_cfg is not None and cfg == full_cfg:
            if "event_personalization" in row.sets:
                notes.append(f"row {row.name!r}: not applicable, every event type of this dataset uses the shared "
                             "stream config (name them with kunlun.streams.NAME.KEY=V or "
                             "kunlun.stream_importance=A,B,...); not trained twice")
                results[row.name] = {"same_as_full": True, "not_applicable": True}
            else:
                notes.append(f"row {row.name!r}: runs what full Kunlun runs on {ctx.device.type} "
                             f"({', '.join(f'{k}={v}' for k, v in row.sets.items())} is its default or what its "
                             f"default resolves to here); not trained twice")
                results[row.name] = {"same_as_full": True}
            continue
        ctx.log(f"ablation [{i + 1}/{len(rows)}] {row.name}: train ({built.preset}) ...")
        try:
            trs = [train_and_predict(ctx, built, seed=r, label=f"ablation {row.name} seed {r}")
                   for r in range(repeats)]
        except KunbenchError as exc:  # e.g. TrainingDiverged: one row must not sink the table
            notes.append(f"row {row.name!r} failed: {exc}")
            ctx.log(f"ablation [{i + 1}/{len(rows)}] {row.name}: failed: {exc}")
            continue
        mets = [t.metrics() for t in trs]
        res = {"runs": trs, "built": built, "ne": mean(m["ne"] for m in mets),
               "expected_ne": mean(m["expected_ne"] for m in mets),
               "gap_closed": mean(m["gap_closed"] for m in mets),
               "expected_gap_closed": mean(m["expected_gap_closed"] for m in mets),
               "flops": mean(t.flops_per_example for t in trs), "params": trs[0].params,
               "ne_samples": [m["ne"] for m in mets], "expected_ne_samples": [m["expected_ne"] for m in mets]}
        if repeats >= 2:
            res["ne_spread"] = std(res["ne_samples"])
            res["expected_ne_spread"] = std(res["expected_ne_samples"])
        else:
            t0 = trs[0]
            res["ne_spread"] = bootstrap_ne(t0.labels, t0.probs)["ne_std"]
            res["expected_ne_spread"] = (bootstrap_expected_ne(t0.p_true, t0.probs)["ne_std"]
                                         if t0.p_true is not None else None)
        results[row.name] = res
        exp_txt = f", expected NE {res['expected_ne']:.5f}" if res["expected_ne"] is not None else ""
        ctx.log(f"ablation [{i + 1}/{len(rows)}] {row.name}: NE {res['ne']:.5f}{exp_txt}, "
                f"{time.perf_counter() - t_start:.0f} s elapsed")

    measured = [r for r in rows if r.name in results and "built" in results[r.name]]
    _throughput(ctx, s, measured, results, interleave=s["interleave"])
    ctx.log(f"ablation: throughput done, {time.perf_counter() - t_start:.0f} s elapsed")
    for row in measured:
        res = results[row.name]
        tps = res["tp"]
        res.update({"train_qps": tps["train"].qps, "train_qps_std": std(tps["train"].window_qps),
                    "infer_qps": tps["infer"].qps, "infer_qps_std": std(tps["infer"].window_qps),
                    "ops": tps["train"].ops.get("cuda_launches" if ctx.device.type == "cuda" else "aten_ops"),
                    "kernels": ", ".join(f"{k}={v}" for k, v in tps["train"].kernels.items()) or "-"})
        if mfu(res["flops"], res["train_qps"], peak, training=True, world_size=ctx.world_size) is not None:
            res["mfu"] = mfu(res["flops"], res["train_qps"], peak, training=True, world_size=ctx.world_size)
            res["mfu_samples"] = [mfu(res["flops"], q, peak, training=True, world_size=ctx.world_size)
                                  for q in tps["train"].window_qps]
    for name, res in list(results.items()):
        if res.get("same_as_full"):
            if "full" in results and "tp" in results["full"]:
                results[name] = {**results["full"], **res}
            else:
                del results[name]

    ref = results.get(ref_name)
    table_rows = []
    extra_rows = []
    for row in rows:
        res = results.get(row.name)
        if res is None:
            continue
        variant = row.name
        d: dict[str, Any] = {"row": row.name, "backend": row.backend, "ne": res["ne"], "ne_spread": res["ne_spread"],
                             "expected_ne": res["expected_ne"], "expected_ne_spread": res["expected_ne_spread"],
                             "gap_closed": res["gap_closed"], "expected_gap_closed": res["expected_gap_closed"],
                             "gflops": res["flops"] / 1e9 if res["flops"] is not None else None,
                             "train_qps": res["train_qps"], "infer_qps": res["infer_qps"],
                             "mfu": res.get("mfu"), "params": res["params"], "ops": res.get("ops"),
                             "kernels": res.get("kernels"),
                             "paper_dne": row.paper_dne, "paper_dflops": row.paper_dflops,
                             "paper_dqps": row.paper_dqps, "paper_note": row.paper_note, "paper": paper_text(row)}
        if res.get("same_as_full"):
            d["row"] = f"{row.name} ({'n/a: one shared stream' if res.get('not_applicable') else '= full'})"
        if ref is not None and row.name != ref_name:
            # ΔNE % on expected NE (the comparison); the sampled-label ΔNE stays beside it
            d["dne"] = _pct(res["expected_ne"], ref["expected_ne"])
            d["dne_sampled"] = _pct(res["ne"], ref["ne"])
            if repeats >= 2:
                d["dne_spread"] = std(_pct(a, b) for a, b in zip(res["expected_ne_samples"],
                                                                  ref["expected_ne_samples"]))
                d["dne_sampled_spread"] = std(_pct(a, b) for a, b in zip(res["ne_samples"], ref["ne_samples"]))
            else:
                a, b = res["runs"][0], ref["runs"][0]
                if same_eval_rows(a, b):
                    d["dne_sampled_spread"] = bootstrap_ne(a.labels, a.probs, b.probs)["rel_pct_std"]
                    if a.p_true is not None:
                        d["dne_spread"] = bootstrap_expected_ne(a.p_true, a.probs, b.probs)["rel_pct_std"]
            d["dflops"] = _pct(res["flops"], ref["flops"])
            if s["interleave"]:  # windows of one round ran side by side: compare them pairwise
                for mode in ("train", "infer"):
                    pcts = [100.0 * (r - 1.0) for r in paired_ratios(res["tp"][mode].window_qps,
                                                                     ref["tp"][mode].window_qps)]
                    d[f"dqps_{mode}"] = statistics.median(pcts) if pcts else None
                    # a row that reuses full's run has no windows of its own: no spread to show
                    d[f"dqps_{mode}_spread"] = (std(pcts) if len(pcts) >= 2 and not res.get("same_as_full")
                                                else None)
            else:
                d["dqps_train"] = _pct(res["train_qps"], ref["train_qps"])
                d["dqps_train_spread"] = _ratio_pct_spread(res["train_qps"], res["train_qps_std"],
                                                           ref["train_qps"], ref["train_qps_std"])
                d["dqps_infer"] = _pct(res["infer_qps"], ref["infer_qps"])
        table_rows.append(d)
        extra_rows.append({"row": d["row"], "backend": row.backend, "delta_expected_ne_pct": d.get("dne"),
                           "delta_expected_ne_pct_spread": d.get("dne_spread"),
                           "delta_ne_pct": d.get("dne_sampled"), "delta_ne_pct_spread": d.get("dne_sampled_spread"),
                           "delta_flops_pct": d.get("dflops"), "delta_qps_train_pct": d.get("dqps_train"),
                           "delta_qps_train_pct_spread": d.get("dqps_train_spread"),
                           "delta_qps_infer_pct": d.get("dqps_infer"),
                           "delta_qps_infer_pct_spread": d.get("dqps_infer_spread"), "paper_delta_ne_pct": row.paper_dne,
                           "paper_delta_flops_pct": row.paper_dflops, "paper_delta_qps_pct": row.paper_dqps})
        ne_kind = f"std over {repeats} seeds" if repeats >= 2 else "bootstrap std over eval rows"
        tel = res["tp"]["train"].telemetry if "tp" in res else None
        ms = [
            measurement(NAME, row.backend, variant, "ne", res["ne"], better="lower", spread=res["ne_spread"],
                        spread_kind=ne_kind, samples=res["ne_samples"] if repeats >= 2 else None,
                        telemetry=res["runs"][0].telemetry),
            measurement(NAME, row.backend, variant, "expected_ne", res["expected_ne"], better="lower",
                        spread=res["expected_ne_spread"], spread_kind=ne_kind,
                        samples=res["expected_ne_samples"] if repeats >= 2 else None,
                        note="p_true as soft labels: no label-sampling noise"),
            measurement(NAME, row.backend, variant, "gap_closed", res["gap_closed"], better="higher"),
            measurement(NAME, row.backend, variant, "expected_gap_closed", res["expected_gap_closed"],
                        better="higher", note="p_true as soft labels: no label-sampling noise"),
            measurement(NAME, row.backend, variant, "fwd_gflops_per_example", d["gflops"], unit="GFLOP", better="none"),
            measurement(NAME, row.backend, variant, "train_qps", res["train_qps"], unit="ex/s", better="higher",
                        samples=res["tp"]["train"].window_qps, telemetry=tel, batch_size=s["batch_size"]),
            measurement(NAME, row.backend, variant, "infer_qps", res["infer_qps"], unit="ex/s", better="higher",
                        samples=res["tp"]["infer"].window_qps, telemetry=res["tp"]["infer"].telemetry,
                        batch_size=s["batch_size"]),
            measurement(NAME, row.backend, variant, "params", res["params"], better="none"),
            measurement(NAME, row.backend, variant, "ops_per_train_step", res.get("ops"), unit="ops", better="lower",
                        kernels=res.get("kernels"),
                        spread_kind="CUDA launches" if ctx.device.type == "cuda" else "aten ops"),
        ]
        if res.get("mfu") is not None:
            ms.append(measurement(NAME, row.backend, variant, "train_mfu_pct", res["mfu"], unit="%", better="higher",
                                  samples=res["mfu_samples"], flops_convention=flops_convention(True),
                                  peak_source=peak.get("source")))
        dkind = "paired bootstrap over eval rows" if repeats < 2 else f"std over {repeats} seeds"
        if d.get("dne") is not None:
            ms.append(measurement(NAME, row.backend, variant, "delta_expected_ne_pct", d["dne"], unit="%",
                                  better="lower", spread=d.get("dne_spread"), spread_kind=dkind,
                                  reference=ref_name, note="relative change of expected NE (p_true as soft labels)"))
        if d.get("dne_sampled") is not None:
            ms.append(measurement(NAME, row.backend, variant, "delta_ne_pct", d["dne_sampled"], unit="%",
                                  better="lower", spread=d.get("dne_sampled_spread"), spread_kind=dkind,
                                  reference=ref_name, note="relative change of NE on the sampled labels"))
        out.measurements += ms

    ref_label = "full Kunlun" if ref_name == "full" else ref_name
    out.tables.append({
        "title": f"ablation: one switch per row vs {ref_label} (ΔNE > 0 is worse; ± = noise)",
        "columns": [
            {"key": "row", "header": "row"},
            {"key": "expected_ne", "header": "exp. NE", "fmt": ".5f"},
            {"key": "dne", "header": "ΔNE % (exp.)", "fmt": "+.3f", "pm": "dne_spread"},
            {"key": "ne", "header": "NE (sampled)", "fmt": ".5f"},
            {"key": "dne_sampled", "header": "ΔNE % (sampled)", "fmt": "+.2f", "pm": "dne_sampled_spread"},
            {"key": "gap_closed", "header": "gap closed", "fmt": ".3f"},
            {"key": "expected_gap_closed", "header": "exp. gap", "fmt": ".3f"},
            {"key": "gflops", "header": "fwd GFLOPs/ex", "fmt": ".3g"},
            {"key": "dflops", "header": "ΔFLOPs %", "fmt": "+.1f"},
            {"key": "train_qps", "header": "train ex/s", "fmt": ",.0f"},
            {"key": "infer_qps", "header": "infer ex/s", "fmt": ",.0f"},
            {"key": "dqps_train", "header": "Δ train QPS %", "fmt": "+.1f", "pm": "dqps_train_spread"},
            {"key": "dqps_infer", "header": "Δ infer QPS %", "fmt": "+.1f", "pm": "dqps_infer_spread"},
            {"key": "mfu", "header": "MFU %", "fmt": ".2f"},
            {"key": "ops", "header": ("CUDA launches" if ctx.device.type == "cuda" else "aten ops") + "/train step",
             "fmt": ",.0f"},
            {"key": "params", "header": "params", "fmt": ","},
            {"key": "paper", "header": "paper"},
        ],
        "rows": table_rows, "label_columns": 1,
        "notes": [world_note(ctx) + f"; throughput at batch {s['batch_size']} from the in-memory source, "
                  f"median of {s['windows']} windows",
                  f"MFU: {flops_convention(True)} FLOPs x train ex/s / peak ({peak.get('source')})",
                  "kernels that ran: " + "; ".join(
                      f"{k} ({', '.join(r['row'] for r in table_rows if r.get('kernels') == k)})"
                      for k in dict.fromkeys(r.get("kernels") for r in table_rows if r.get("kernels"))),
                  *ctx.oracle_notes(),
                  "ΔNE % (exp.) compares expected NE, ΔNE % (sampled) the NE of the drawn clicks; ± is "
                  + ("the std over seeds" if repeats >= 2 else
                             "a paired bootstrap over eval rows (eval-sample noise only, not training-seed "
                             "variance: --repeat N for that)"),
                  "at a low CTR the label draw dominates sampled NE",
                  "paper: the Kunlun paper's ablations (B200, Meta data), converted to this row's direction "
                  "(e.g. window -29.5% FLOPs => full attention +41.8%)"]
                 + [f"{r.name}: {r.paper_note}" for r in rows if r.paper_note and r.name in results],
    })
    out.notes += notes
    out.extra["ablation_rows"] = extra_rows
    out.extra["reference_row"] = ref_name
    out.extra["peak"] = peak
    out.dataset = ctx.dataset_info()
    if ctx.is_main and ctx.opts.write:
        try:
            from kunbench.results.plots import plot_ablation

            d = Path(ctx.opts.out or "results")
            d.mkdir(parents=True, exist_ok=True)
            p = plot_ablation({"extra": {"ablation_rows": extra_rows}, "_source": time.strftime("%Y%m%dT%H%M%S")}, d)
            if p is not None:
                out.notes.append(f"plot: {p}")
        except KunbenchError as exc:
            out.notes.append(f"no plot: {exc}")
    return out


SUITE = SuiteSpec(NAME, "Kunlun with one switch flipped per row, plus InterFormer and Wukong: NE, ΔNE, FLOPs, QPS, "
                        "MFU, params, beside the paper's deltas", run, data_parallel=True,
                  options=('batch_size', 'interleave', 'rows', 'warmup', 'window_s', 'windows'))
