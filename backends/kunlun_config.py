"""Kunlun's config (docs/models.md section 3): a frozen dataclass, its validation and size presets.

Every one of the seven components has a switch, named as in docs/models.md (values in brackets):
`rote` [rote | rope | none], `gdpa` [auto | triton | torch], `summary` [hsp | pma], `sumkron` [on | off],
`attention` [window | full], `compskip` [on | off], `event_personalization` [on | off] and
`experts` [M >= 1]. The switches are plain strings so `--set compskip=off` parses as written
(`true`/`false` are accepted too and normalised to `on`/`off` by `validate`).

Per event stream settings (`StreamConfig`: width, heads, summary tokens, layers, window, max
tokens) live in `streams` (one entry per event type name) and `stream` (the shared config used by
event types that `streams` does not name, and by every stream when event_personalization is off).
Reach them with `--set stream.window=16` or `--set streams.click.window=64`; naming a new event
type (`streams.view.layers=1`) adds it, starting from `stream`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kunbench import overrides
from kunbench.backends.common import check_dims, check_positive, need
from kunbench.backends.gdpa_ops import GDPA_CHOICES, normalize_choice
from kunbench.data.manifest import DatasetSchema
from kunbench.errors import KunbenchError
from kunbench.kernels.gdpa_reference import ACTIVATIONS as GDPA_ACTIVATIONS

ON_OFF = ("on", "off")
_TRUTHY = {"true", "yes", "1", "on"}
_FALSY = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class StreamConfig:
    """One event stream's sequence model (docs/models.md 3.6)."""

    d: int = 32  # stream width d_e (tokens are projected d -> d_e; summaries d_e -> d)
    heads: int = 2  # heads of the GDPA PFFN, the self-attention and the seed attention
    n_tok: int = 4  # HSP summary tokens (n_seed = seed_factor * n_tok seeds)
    layers: int = 2  # layers this stream runs (<= n_layers; the first `layers` global layers)
    window: int = 32  # symmetric self-attention window w: |i - j| <= w
    max_len: int = 256  # most recent events kept

    def validate(self, name: str, n_layers: int) -> None:
        for key in ("d", "heads", "n_tok", "layers", "max_len"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{name}.{key} must be an integer >= 1, got {v!r}")
        need(isinstance(self.window, int) and not isinstance(self.window, bool) and self.window >= 0,
             f"{name}.window must be an integer >= 0, got {self.window!r}")
        need(self.d % self.heads == 0, f"{name}.d ({self.d}) must be divisible by {name}.heads ({self.heads})")
        need((self.d // self.heads) % 2 == 0,
             f"{name}: head width d/heads = {self.d // self.heads} must be even for ROTE/RoPE")
        need(self.layers <= n_layers, f"{name}.layers ({self.layers}) must be <= n_layers ({n_layers})")


def _default_streams() -> dict[str, StreamConfig]:
    return {
        "impression": StreamConfig(d=16, heads=2, n_tok=2, layers=2, window=16, max_len=128),
        "click": StreamConfig(d=32, heads=2, n_tok=4, layers=2, window=32, max_len=256),
        "conversion": StreamConfig(d=32, heads=2, n_tok=4, layers=2, window=32, max_len=256),
    }


@dataclass(frozen=True)
class KunlunConfig:
    # shared width and depth
    d: int = 32  # embedding width and the width of non-sequence tokens and summaries
    n_layers: int = 2
    n_sum: int = 4  # X_sum tokens: Gate(LCE(X)), the input of the per-stream K/V generation
    # 3.1 ROTE
    rote: str = "rote"  # rote | rope | none
    t_scale: float = 3600.0  # seconds: phi = log(1 + (request_ts - ts) / t_scale)
    rope_base: float = 10_000.0  # frequency base of the position bands
    rote_time_base: float = 10.0  # frequency base of the time bands (phi is O(1..10))
    # 3.2 GDPA PFFN
    # GDPA kernel (backends.gdpa_ops): auto | triton (fused kernels) | torch (batched matmuls); auto is
    # triton on CUDA, torch elsewhere. Older configs' fused / naive read as auto / torch.
    gdpa: str = "auto"
    dff: int = 32  # F: generated K/V rows per head
    kv_hidden: int = 128  # hidden width of the K/V weight-generation MLP
    gdpa_activations: tuple[str, ...] = ("gelu", "silu")  # per head, cycled over the heads
    gdpa_scale: str = "batch_maxlen"  # s = 1/maxlen: batch_maxlen | t_max (the stream's max_len)
    # the PFFN's s: `same` = gdpa_scale; n_kv = 1/dff (its sum runs over the F generated rows)
    pffn_scale: str = "same"
    gdpa_scale_position: str = "post"  # post: act(QK^T) * s; pre: act(QK^T * s)
    # 3.3 HSP
    summary: str = "hsp"  # hsp | pma
    sumkron: str = "on"  # on: SumKronLinear; off: one full linear map
    seed_factor: int = 4  # n_seed = seed_factor * n_tok
    sumkron_k: int = 4  # k: Kronecker terms
    # softmax (PMA-style, default) | gdpa (GDPA seed pooling with seed_activation): GDPA pooling starts
    # near zero (act(q.k) ~ q.k/2 at init) where softmax starts as a mean, and trailed it by ~0.01 NE
    seed_attention: str = "softmax"
    seed_activation: str = "silu"
    # 3.4 sliding-window self-attention
    attention: str = "window"  # window | full
    attention_act: str | None = None  # None: softmax; an activation: GDPA self-attention mode
    attention_kernel: str = "sdpa"  # softmax path: sdpa (banded chunks) | naive (explicit matmuls)
    # 3.5, 3.6
    compskip: str = "on"
    event_personalization: str = "on"
    # packed: each stream's real events back to back (no padding work; the default) | padded: [B, T]
    sequence_layout: str = "packed"
    # packed streams: the padded products (the PFFN's, seed pooling, PMA) run over at most this many
    # groups of rows of similar length, each padded to its own longest row (1: one padded view)
    row_groups: int = 2
    stream: StreamConfig = field(default_factory=StreamConfig)
    streams: dict[str, StreamConfig] = field(default_factory=_default_streams)
    # a dataset's own event types, most important first (e.g. buy,cart,fav,pv): the first takes the
    # `conversion` stream settings, the last `impression` (the most numerous, least telling kind),
    # those between `click`; names in `streams` keep their own settings, and a type named nowhere
    # uses the shared `stream`
    stream_importance: tuple[str, ...] = ()
    # 3.7 Mixture of Wukong Experts
    experts: int = 2  # M dense experts, outputs summed
    expert_layers: int = 1  # Wukong layers per expert (vertical scaling)
    n_F: int = 8
    n_L: int = 8
    fm_k: int = 16
    fm_y: str = "static"
    fmb_mlp: tuple[int, ...] = (256,)
    # head and input layer
    head_mlp: tuple[int, ...] = (256, 64)
    n_dense_tokens: int = 2
    max_rows_per_field: int = 32_768
    sparse_embeddings: bool = True
    act: str = "relu"

    # ---- overrides ---------------------------------------------------------------------------
    def apply_override(self, path: list[str], value: Any, full_key: str) -> Any:
        """`streams.NAME.KEY=value` (a plain dataclass walk cannot index a dict)."""
        if path[0] != "streams":
            return NotImplemented
        if len(path) != 3:
            raise KunbenchError(f"config key {full_key!r} must look like streams.NAME.KEY")
        base = self.streams.get(path[1], self.stream)
        updated = overrides._apply_one(base, path[2:], value, full_key)
        return dataclasses.replace(self, streams={**self.streams, path[1]: updated})

    # ---- derived -----------------------------------------------------------------------------
    def stream_for(self, event_type: str) -> StreamConfig:
        if self.event_personalization == "off":
            return self.stream
        if event_type in self.streams:
            return self.streams[event_type]
        if event_type in self.stream_importance:
            rank, last = self.stream_importance.index(event_type), len(self.stream_importance) - 1
            preset = "conversion" if rank == 0 else "impression" if rank == last else "click"
            return self.streams.get(preset, self.stream)
        return self.stream

    def stream_configs(self, schema: DatasetSchema) -> dict[str, StreamConfig]:
        return {et: self.stream_for(et) for et in schema.event_types}

    def personalized(self, schema: DatasetSchema) -> bool:
        """Whether event personalization changes anything on this dataset: some event type gets
        settings other than the shared `stream`."""
        return any(sc != self.stream for sc in dataclasses.replace(self, event_personalization="on")
                   .stream_configs(schema).values())

    def notes(self, schema: DatasetSchema) -> list[str]:
        unknown = [n for n in self.stream_importance if n not in schema.event_types]
        if unknown:
            return [f"kunlun: stream_importance names {', '.join(unknown)}, not an event type of this dataset "
                    f"({', '.join(schema.event_types)}); the ranks count it all the same"]
        if schema.event_types and self.event_personalization == "on" and not self.personalized(schema):
            return [f"kunlun: no event type of this dataset ({', '.join(schema.event_types)}) has its own stream "
                    "settings, so every stream uses the shared `stream` config and event_personalization changes "
                    "nothing; name them with --set streams.NAME.KEY=V or kunlun.stream_importance=A,B,..."]
        return []

    @property
    def longest_stream_len(self) -> int:
        """The largest `max_len` of any stream: an upper bound on every stream's kept length (the
        loader's pre-truncation when no schema says which stream is which)."""
        return max([self.stream.max_len, *(s.max_len for s in self.streams.values())])

    def head_activation(self, h: int) -> str:
        return self.gdpa_activations[h % len(self.gdpa_activations)]

    def activations_for(self, heads: int) -> list[str]:
        return [self.head_activation(h) for h in range(heads)]

    def runs(self, layer: int) -> tuple[bool, bool, bool]:
        """(GDPA PFFN, self-attention, fresh summary) in global layer `layer` (docs/models.md 3.5)."""
        if self.compskip == "off":
            return True, True, True
        even = layer % 2 == 0
        return even, not even, even

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> "KunlunConfig":
        cfg = self
        for key in ("sumkron", "compskip", "event_personalization"):
            v = getattr(cfg, key)
            low = str(v).strip().lower()
            if low in _TRUTHY:
                cfg = dataclasses.replace(cfg, **{key: "on"})
            elif low in _FALSY:
                cfg = dataclasses.replace(cfg, **{key: "off"})
            else:
                raise KunbenchError(f"{key} must be on or off, got {v!r}")
        cfg = dataclasses.replace(cfg, gdpa=normalize_choice(cfg.gdpa))
        if isinstance(cfg.attention_act, str) and cfg.attention_act.strip().lower() in ("none", "softmax", ""):
            cfg = dataclasses.replace(cfg, attention_act=None)
        cfg._check()
        return cfg

    def _check(self) -> None:
        check_positive(self, "d", "n_layers", "n_sum", "dff", "kv_hidden", "seed_factor", "sumkron_k",
                       "experts", "expert_layers", "n_F", "n_L", "fm_k", "max_rows_per_field", "row_groups")
        check_positive(self, "n_dense_tokens", minimum=0)
        check_dims("fmb_mlp", self.fmb_mlp)
        check_dims("head_mlp", self.head_mlp)
        choices = {"rote": ("rote", "rope", "none"), "gdpa": GDPA_CHOICES, "summary": ("hsp", "pma"),
                   "attention": ("window", "full"), "attention_kernel": ("sdpa", "naive"),
                   "seed_attention": ("gdpa", "softmax"), "gdpa_scale": ("batch_maxlen", "t_max"),
                   "pffn_scale": ("same", "n_kv"),
                   "gdpa_scale_position": ("post", "pre"), "fm_y": ("static", "attentive"),
                   "act": ("relu", "gelu", "silu"),
                   "sequence_layout": ("packed", "padded")}
        for key, allowed in choices.items():
            v = getattr(self, key)
            need(v in allowed, f"{key} must be {' | '.join(allowed)}, got {v!r}")
        acts = self.gdpa_activations
        need(isinstance(acts, tuple) and len(acts) > 0 and all(a in GDPA_ACTIVATIONS for a in acts),
             f"gdpa_activations must be a comma list of {', '.join(GDPA_ACTIVATIONS)}, got {acts!r}")
        need(self.seed_activation in GDPA_ACTIVATIONS,
             f"seed_activation must be one of {', '.join(GDPA_ACTIVATIONS)}, got {self.seed_activation!r}")
        need(self.attention_act is None or self.attention_act in GDPA_ACTIVATIONS,
             f"attention_act must be none (softmax) or one of {', '.join(GDPA_ACTIVATIONS)}, "
             f"got {self.attention_act!r}")
        for key in ("t_scale", "rope_base", "rote_time_base"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                 f"{key} must be a positive number, got {v!r}")
        need(self.max_rows_per_field <= 2**31 - 1,
             f"max_rows_per_field must be <= 2147483647, got {self.max_rows_per_field}")
        need(isinstance(self.stream, StreamConfig), "stream must be a stream section")
        need(isinstance(self.streams, dict) and all(isinstance(s, StreamConfig) for s in self.streams.values()),
             "streams must map event type names to stream sections")
        self.stream.validate("stream", self.n_layers)
        for name, s in self.streams.items():
            s.validate(f"streams.{name}", self.n_layers)
        imp = self.stream_importance
        need(isinstance(imp, tuple) and all(isinstance(n, str) and n for n in imp) and len(set(imp)) == len(imp),
             f"stream_importance must be a comma list of distinct event type names, got {imp!r}")


def _streams(**kw: tuple[int, ...]) -> dict[str, StreamConfig]:
    keys = ("d", "heads", "n_tok", "layers", "window", "max_len")
    return {name: StreamConfig(**dict(zip(keys, vals))) for name, vals in kw.items()}


PRESETS: dict[str, KunlunConfig] = {
    "tiny": KunlunConfig(
        d=16, n_layers=2, n_sum=2, dff=8, kv_hidden=32,
        stream=StreamConfig(d=16, heads=2, n_tok=2, layers=2, window=4, max_len=32),
        #                         d  heads n_tok layers window max_len
        streams=_streams(impression=(8, 2, 1, 1, 2, 16),
                         click=(16, 2, 2, 2, 4, 32),
                         conversion=(16, 2, 2, 2, 4, 32)),
        experts=2, expert_layers=1, n_F=4, n_L=4, fm_k=8, fmb_mlp=(32,), head_mlp=(32,),
        n_dense_tokens=1, max_rows_per_field=4096),
    "small": KunlunConfig(),
    "medium": KunlunConfig(
        d=64, n_layers=4, n_sum=4, dff=64, kv_hidden=256,
        stream=StreamConfig(d=64, heads=4, n_tok=4, layers=4, window=64, max_len=512),
        streams=_streams(impression=(32, 2, 2, 2, 32, 256),
                         click=(64, 4, 8, 4, 64, 512),
                         conversion=(64, 4, 8, 4, 64, 512)),
        experts=2, expert_layers=2, n_F=16, n_L=16, fm_k=24, fmb_mlp=(512,), head_mlp=(512, 128),
        max_rows_per_field=1 << 18),
    "large": KunlunConfig(
        d=128, n_layers=6, n_sum=4, dff=128, kv_hidden=512,
        stream=StreamConfig(d=128, heads=4, n_tok=8, layers=6, window=128, max_len=1024),
        streams=_streams(impression=(64, 2, 4, 4, 64, 512),
                         click=(128, 4, 8, 6, 128, 1024),
                         conversion=(128, 4, 8, 6, 128, 1024)),
        experts=4, expert_layers=2, n_F=16, n_L=16, fm_k=24, fmb_mlp=(1024, 1024), head_mlp=(1024, 256),
        n_dense_tokens=4, max_rows_per_field=1 << 20),
}
