"""Typed generator configuration, presets, and validation at the boundary.

Every knob of the synthetic world lives here and is reachable from a TOML file or `--set`.
Event types are a mapping name -> EventTypeConfig; `event_types=a,b,c` selects or adds types.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from kunbench import overrides
from kunbench.errors import KunbenchError

SCHEMA_VERSION = 1


# Bump whenever the same config and seed would produce different bytes (a new draw order, a new
# term, a new column); it is part of the fingerprint, so caches and resumed runs notice.
OUTPUT_VERSION = 3
# Output versions: 2 = terms 1-7; 3 = world v2, terms 8-12 (repeat, target_peak, transition,
# time_gap, fatigue). A manifest written before version 3 has no `output_version` field.
LEGACY_OUTPUT_VERSION = 2


@dataclass(frozen=True)
class EventTypeConfig:
    """One event-type history: its length law, how focused it is, and how it feeds the label."""

    median_length: float = 50.0
    length_sigma: float = 0.6  # lognormal sigma of the per-row length
    min_length: int = 0
    max_length: int = 256
    interest_prob: float = 0.5  # share of events drawn from the user's interest categories
    recency_days: float = 3.0  # decay time of the recency weighting (signal term 4)
    value: float = 1.0  # event-type value (signal term 5): clicks/conversions above impressions


# the terms world v2 added; a manifest from an older generator has none of them (strength 0)
V2_TERMS = ("repeat", "target_peak", "transition", "time_gap", "fatigue")


@dataclass(frozen=True)
class SignalConfig:
    """Strength of each of the twelve logit terms, in logit standard deviations (0 = off), and
    the shape of the five nonlinear history terms (docs/data.md section 5 gives each formula)."""

    context: float = 0.5
    cross: float = 0.5
    target_match: float = 0.4
    recency: float = 0.35
    event_value: float = 0.35
    surface: float = 0.35
    long_range: float = 0.4
    repeat: float = 0.4
    target_peak: float = 0.45
    transition: float = 0.55
    time_gap: float = 0.45
    fatigue: float = 0.55
    weighted_field_fraction: float = 0.25  # share of context fields with first-order weights
    cross_pairs: int = 16  # number of weighted context field pairs
    peak_temperature: float = 0.05  # target_peak: temperature of the log-sum-exp of similarities
    transition_events: int = 4  # transition: the newest events per stream that count
    transition_decay: float = 0.5  # transition: weight ratio of each older position to the next
    cycle_min_days: float = 1.0  # time_gap: per-category return cycles, log-uniform in [min, max]
    cycle_max_days: float = 14.0
    cycle_width: float = 0.25  # time_gap: std of the bump in log age
    fatigue_days: float = 2.0  # fatigue: decay time of unclicked impressions
    fatigue_exposure: str = ""  # fatigue: exposure stream; "" = `impression`, else the first type
    fatigue_engagement: str = ""  # fatigue: engagement stream; "" = `click`, else the second type


@dataclass(frozen=True)
class GeneratorConfig:
    """Context fields = 4 entity columns (user, ad, ad category, surface) + categorical + dense + multi-hot."""

    preset: str = "tiny"
    rows: int = 4096
    seed: int = 0
    eval_fraction: float = 0.1
    rows_per_shard: int = 2048
    row_group_rows: int = 512
    # context fields
    num_categorical: int = 16
    num_dense: int = 3
    num_multihot: int = 1
    multihot_max_length: int = 8
    cardinality_min: int = 10
    cardinality_max: int = 100_000
    zipf_exponent: float = 1.05
    # entities
    num_users: int = 100_000
    num_items: int = 50_000
    num_item_categories: int = 200
    num_surfaces: int = 6
    user_interests: int = 4
    ad_interest_prob: float = 0.5
    latent_dim: int = 8
    latent_noise: float = 0.6  # item latent = category centroid + noise * N(0, I)
    # time
    start_ts: int = 1_767_225_600  # 2026-01-01T00:00:00Z, first request
    request_span_days: float = 14.0  # requests spread over this span; eval = the latest slice
    history_span_days: float = 30.0
    session_events: float = 8.0  # mean events per session (bursts)
    session_minutes: float = 20.0  # mean spread of events inside a session
    long_range_days: float = 7.0  # signal term 7 reads events older than this
    long_range_event: str = ""  # event type for term 7; "" = the one with the largest median
    base_ctr: float = 0.03
    events: dict[str, EventTypeConfig] = field(default_factory=dict)
    signal: SignalConfig = field(default_factory=SignalConfig)

    # ---- overrides -------------------------------------------------------------------------
    def apply_override(self, path: list[str], value: Any, full_key: str) -> Any:
        """Handle the two keys a plain dataclass walk cannot: event_types and events.NAME.KEY."""
        if path == ["event_types"]:
            names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
            if not names or any(not n for n in names):
                raise KunbenchError(f"event_types must be a comma list of names, got {value!r}")
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise KunbenchError(f"event_types names {', '.join(repeated)} more than once")
            events = {n: self.events.get(n, EventTypeConfig()) for n in names}
            return dataclasses.replace(self, events=events)
        if path[0] == "events":
            if len(path) == 1:
                raise KunbenchError("config key 'events' is a section; set events.NAME.KEY")
            name = path[1]
            if name not in self.events:
                known = ", ".join(self.events)
                raise KunbenchError(
                    f"unknown event type {name!r} in {full_key!r} (known: {known}; add types "
                    f"with event_types=...)")
            if len(path) != 3:
                raise KunbenchError(f"config key {full_key!r} must look like events.NAME.KEY")
            updated = overrides._apply_one(self.events[name], path[2:], value, full_key)
            return dataclasses.replace(self, events={**self.events, name: updated})
        return NotImplemented

    # ---- derived ---------------------------------------------------------------------------
    @property
    def event_names(self) -> tuple[str, ...]:
        return tuple(self.events)

    @property
    def long_range_stream(self) -> str:
        if self.long_range_event:
            return self.long_range_event
        return max(self.events, key=lambda n: self.events[n].median_length)

    @property
    def eval_rows(self) -> int:
        return int(round(self.rows * self.eval_fraction))

    @property
    def train_rows(self) -> int:
        return self.rows - self.eval_rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Identity of the dataset these settings produce (rows included) with this generator's
        output format: a cached dataset from a generator that drew differently is not reused."""
        blob = json.dumps({"output_version": OUTPUT_VERSION, **self.to_dict()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> "GeneratorConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise KunbenchError(msg)

        # every number finite first: an inf or nan slips through range checks written as comparisons
        for section, obj in [("", self), ("signal.", self.signal),
                             *((f"events.{n}.", ev) for n, ev in self.events.items())]:
            for f_ in dataclasses.fields(obj):
                v = getattr(obj, f_.name)
                if isinstance(v, float) and not math.isfinite(v):
                    raise KunbenchError(f"{section}{f_.name} must be a finite number, got {v}")
        need(self.rows >= 1, f"rows must be >= 1, got {self.rows}")
        # beyond this the shard plan alone takes minutes and gigabytes before anything is written
        need(self.rows <= 10**10, f"rows must be <= 10,000,000,000, got {self.rows:,}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        # timestamps are int64 epoch seconds: keep the start and both spans far from overflow
        need(0 <= self.start_ts <= 2**32, f"start_ts must be epoch seconds in [0, 2^32], got {self.start_ts}")
        for name in ("request_span_days", "history_span_days", "long_range_days"):
            need(getattr(self, name) <= 36_500, f"{name} must be <= 36500 (100 years), got {getattr(self, name)}")
        need(self.session_minutes <= 525_600, f"session_minutes must be <= 525600 (a year), got {self.session_minutes}")
        need(self.latent_dim <= 4096, f"latent_dim must be <= 4096, got {self.latent_dim}")
        # a few thousand context columns is already far past any ranking log (paper: 936 + 48 + 12)
        for name, cap in (("num_categorical", 20_000), ("num_dense", 20_000), ("num_multihot", 1_000)):
            need(getattr(self, name) <= cap, f"{name} must be <= {cap:,}, got {getattr(self, name):,}")
        need(0.0 <= self.eval_fraction < 1.0, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        need(self.rows_per_shard >= 1, f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
        need(self.row_group_rows >= 1, f"row_group_rows must be >= 1, got {self.row_group_rows}")
        for name in ("num_categorical", "num_dense", "num_multihot"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.multihot_max_length >= 1, f"multihot_max_length must be >= 1, got {self.multihot_max_length}")
        need(2 <= self.cardinality_min <= self.cardinality_max,
             f"need 2 <= cardinality_min <= cardinality_max, got {self.cardinality_min}, {self.cardinality_max}")
        need(self.cardinality_max <= 2**40, f"cardinality_max must be <= 2**40, got {self.cardinality_max}")
        need(0.0 < self.zipf_exponent <= 4.0, f"zipf_exponent must be in (0, 4], got {self.zipf_exponent}")
        for name in ("num_users", "num_items", "num_item_categories", "num_surfaces", "user_interests",
                     "latent_dim"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.num_items >= self.num_item_categories,
             f"num_items ({self.num_items}) must be >= num_item_categories ({self.num_item_categories})")
        need(0.0 <= self.ad_interest_prob <= 1.0, f"ad_interest_prob must be in [0, 1], got {self.ad_interest_prob}")
        need(self.latent_noise >= 0.0, f"latent_noise must be >= 0, got {self.latent_noise}")
        need(self.request_span_days > 0, f"request_span_days must be > 0, got {self.request_span_days}")
        need(self.history_span_days > 0, f"history_span_days must be > 0, got {self.history_span_days}")
        need(self.session_events >= 1, f"session_events must be >= 1, got {self.session_events}")
        need(self.session_minutes > 0, f"session_minutes must be > 0, got {self.session_minutes}")
        need(self.long_range_days >= 0, f"long_range_days must be >= 0, got {self.long_range_days}")
        need(0.0 < self.base_ctr < 1.0, f"base_ctr must be in (0, 1), got {self.base_ctr}")
        need(len(self.events) >= 1, "at least one event type is required")
        need(len(self.events) <= 64, f"at most 64 event types, got {len(self.events)}")
        for name, ev in self.events.items():
            need(name.isidentifier(), f"event type name must be an identifier, got {name!r}")
            need(ev.median_length > 0, f"events.{name}.median_length must be > 0, got {ev.median_length}")
            need(ev.length_sigma >= 0, f"events.{name}.length_sigma must be >= 0, got {ev.length_sigma}")
            need(0 <= ev.min_length <= ev.max_length,
                 f"events.{name}: need 0 <= min_length <= max_length, got {ev.min_length}, {ev.max_length}")
            need(ev.max_length <= 100_000, f"events.{name}.max_length must be <= 100000, got {ev.max_length}")
            need(ev.median_length <= ev.max_length,
                 f"events.{name}.median_length ({ev.median_length}) is above max_length ({ev.max_length})")
            need(0.0 <= ev.interest_prob <= 1.0,
                 f"events.{name}.interest_prob must be in [0, 1], got {ev.interest_prob}")
            need(ev.recency_days > 0, f"events.{name}.recency_days must be > 0, got {ev.recency_days}")
            need(math.isfinite(ev.value), f"events.{name}.value must be finite, got {ev.value}")
        need(self.long_range_event == "" or self.long_range_event in self.events,
             f"long_range_event {self.long_range_event!r} is not an event type ({', '.join(self.events)})")
        s = self.signal
        for f_ in dataclasses.fields(SignalConfig):
            v = getattr(s, f_.name)
            if isinstance(v, str):
                need(v == "" or v in self.events,
                     f"signal.{f_.name} {v!r} is not an event type ({', '.join(self.events)})")
                continue
            need(v >= 0 and math.isfinite(v), f"signal.{f_.name} must be a finite number >= 0, got {v}")
        need(s.weighted_field_fraction <= 1.0,
             f"signal.weighted_field_fraction must be <= 1, got {s.weighted_field_fraction}")
        need(s.peak_temperature > 0, f"signal.peak_temperature must be > 0, got {s.peak_temperature}")
        need(1 <= s.transition_events <= 64,
             f"signal.transition_events must be in [1, 64], got {s.transition_events}")
        need(s.transition_decay <= 1.0, f"signal.transition_decay must be <= 1, got {s.transition_decay}")
        need(0 < s.cycle_min_days <= s.cycle_max_days,
             f"need 0 < signal.cycle_min_days <= signal.cycle_max_days, got {s.cycle_min_days}, "
             f"{s.cycle_max_days}")
        need(s.cycle_width > 0, f"signal.cycle_width must be > 0, got {s.cycle_width}")
        need(s.fatigue_days > 0, f"signal.fatigue_days must be > 0, got {s.fatigue_days}")
        return self

    @property
    def fatigue_streams(self) -> tuple[str, str] | None:
        """(exposure, engagement) event types of the fatigue term; None with fewer than two types."""
        names = list(self.events)
        s = self.signal
        exposure = s.fatigue_exposure or ("impression" if "impression" in names else names[0])
        rest = [n for n in names if n != exposure]
        if not rest:
            return None
        engagement = s.fatigue_engagement or ("click" if "click" in rest else rest[0])
        if engagement == exposure:
            return None
        return exposure, engagement


def _events(spec: dict[str, tuple]) -> dict[str, EventTypeConfig]:
    keys = ("median_length", "length_sigma", "min_length", "max_length", "interest_prob",
            "recency_days", "value")
    return {name: EventTypeConfig(**dict(zip(keys, vals))) for name, vals in spec.items()}


PRESETS: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(
        preset="tiny", rows=4096, rows_per_shard=1024, row_group_rows=256,
        num_categorical=12, num_dense=3, num_multihot=1, cardinality_max=100_000,
        num_users=50_000, num_items=20_000, num_item_categories=100,
        history_span_days=30.0,
        events=_events({
            #              median sigma min max  interest recency value
            "impression": (32, 0.5, 4, 64, 0.4, 2.0, 0.25),
            "click": (16, 0.5, 1, 64, 0.7, 5.0, 1.0),
            "conversion": (8, 0.5, 0, 64, 0.85, 10.0, 2.0),
        }),
    ),
    "small": GeneratorConfig(
        # 270k train rows: with world v2 one pass over 180k rows left the best backend under 0.3 of
        # the gap (Wukong 0.289, Kunlun 0.275, seed 0) and Wukong's curve was still steep (0.222
        # at 90k rows), so small grew by half, eval included (30k rows)
        preset="small", rows=300_000, eval_fraction=0.1, rows_per_shard=4096, row_group_rows=512,
        num_categorical=88, num_dense=6, num_multihot=2, cardinality_max=1_000_000,
        num_users=500_000, num_items=100_000, num_item_categories=500,
        history_span_days=60.0,
        events=_events({
            "impression": (180, 0.35, 50, 300, 0.4, 2.0, 0.25),
            "click": (90, 0.35, 50, 300, 0.7, 5.0, 1.0),
            "conversion": (60, 0.3, 50, 300, 0.85, 10.0, 2.0),
        }),
    ),
    "standard": GeneratorConfig(
        preset="standard", rows=200_000, rows_per_shard=2048, row_group_rows=256,
        num_categorical=276, num_dense=14, num_multihot=6, cardinality_max=10_000_000,
        num_users=5_000_000, num_items=1_000_000, num_item_categories=2_000,
        history_span_days=90.0,
        events=_events({
            "impression": (500, 0.55, 100, 2048, 0.4, 2.0, 0.25),
            "click": (250, 0.5, 50, 1024, 0.7, 5.0, 1.0),
            "conversion": (120, 0.5, 20, 512, 0.85, 10.0, 2.0),
        }),
    ),
    "paper": GeneratorConfig(
        preset="paper", rows=1_000_000, rows_per_shard=1024, row_group_rows=128,
        num_categorical=936, num_dense=48, num_multihot=12, cardinality_max=10_000_000,
        num_users=20_000_000, num_items=4_000_000, num_item_categories=5_000,
        history_span_days=180.0,
        events=_events({
            "impression": (1200, 0.5, 200, 3000, 0.35, 2.0, 0.2),
            "view": (900, 0.5, 100, 3000, 0.4, 2.0, 0.3),
            "click": (500, 0.5, 50, 3000, 0.7, 5.0, 1.0),
            "like": (300, 0.5, 20, 3000, 0.7, 7.0, 1.0),
            "share": (100, 0.6, 0, 3000, 0.75, 7.0, 1.2),
            "comment": (80, 0.6, 0, 3000, 0.75, 7.0, 1.2),
            "follow": (60, 0.6, 0, 3000, 0.8, 14.0, 1.5),
            "add_to_cart": (100, 0.6, 0, 3000, 0.8, 10.0, 1.8),
            "search": (200, 0.6, 0, 3000, 0.6, 3.0, 0.8),
            "conversion": (150, 0.5, 20, 3000, 0.85, 14.0, 2.0),
        }),
    ),
}


def build_config(preset: str = "tiny", config_file: str | None = None, sets: dict[str, Any] | None = None,
                 **explicit: Any) -> GeneratorConfig:
    """Preset, then config file, then --set overrides, then explicit CLI flags; validated."""
    if preset not in PRESETS:
        raise KunbenchError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = PRESETS[preset]
    if config_file:
        data = overrides.load_toml(config_file)
        if "preset" in data:
            file_preset = data.pop("preset")
            if file_preset not in PRESETS:
                raise KunbenchError(f"unknown preset {file_preset!r} in {config_file}")
            cfg = PRESETS[file_preset]
        if "event_types" in data:  # select/add types before their tables are applied
            cfg = overrides.apply(cfg, {"event_types": data.pop("event_types")})
        cfg = overrides.apply(cfg, overrides.flatten(data))
    if sets:
        if "event_types" in sets:
            cfg = overrides.apply(cfg, {"event_types": sets["event_types"]})
        cfg = overrides.apply(cfg, {k: v for k, v in sets.items() if k != "event_types"})
    cfg = overrides.apply(cfg, {k: v for k, v in explicit.items() if v is not None})
    return cfg.validate()


def config_from_dict(data: dict[str, Any]) -> GeneratorConfig:
    """Rebuild a config from a manifest's `config` block. A block written before world v2 has no
    strengths for terms 8-12: its labels never had them, so they are 0, not today's defaults."""
    data = dict(data)
    events = {n: EventTypeConfig(**e) for n, e in data.pop("events").items()}
    signal_data = dict(data.pop("signal"))
    for term in V2_TERMS:
        signal_data.setdefault(term, 0.0)
    signal = SignalConfig(**signal_data)
    return GeneratorConfig(**data, events=events, signal=signal).validate()
