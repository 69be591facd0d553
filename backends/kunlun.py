"""Kunlun (docs/models.md section 3): InterFormer's two streams with every module replaced.

Inputs (the shared input layer, docs/models.md 0): non-sequence tokens `X [B, n_x, d]` and one
sequence per event type `e` (item + category embedding, the most recent `max_len_e` events,
timestamps beside), projected `d -> d_e` when the stream is narrower or wider than `d`.

Per layer `l` (docs/models.md 3.8):
1. weight generation input `X_sum = Gate(LCE(X))` `[B, n_sum, d]` (only in layers where some
   stream runs the GDPA PFFN, its one consumer);
2. per stream `e` active in layer `l` (`l < layers_e`), by CompSkip (3.5; `config.runs(l)`):
   GDPA PFFN block `S <- S + RMSNorm(LN(S) + GDPA(LN(S), K, V))` with `K, V` generated from
   `flatten(X_sum)` (3.2), and/or the sliding-window self-attention block with ROTE (3.1, 3.4);
3. per stream summary `[B, n_tok_e, d]`: a fresh HSP (3.3) or the last one reused (CompSkip);
4. `X <- MoWE([X || summaries of all streams])`, `M` Wukong experts summed (3.7), every layer.
Head: `MLP([flatten(X) || flatten(summaries)])` -> logit. Decision: a stream whose last layer
reused its summary (CompSkip on, last active layer odd) gets one more fresh summary for the head,
so the work of that layer reaches the logit (InterFormer recomputes its summaries the same way).

Layout (`sequence_layout`): `packed` (default) keeps each stream's real events back to back,
`[N, d_e]`, so per-token work costs the real events only; the windowed attention runs on the
packed tokens and the products that need a per-row shape (the PFFN's with its per-row K/V, PMA,
the GDPA modes) use a padded view. `padded`: left-aligned padded tensors with masks; every
consumer masks padded keys and padded query rows are zeroed or never read, so padding changes no
output. The two layouts compute the same logits (tests prove it).
GDPA's scale `s = 1/maxlen` uses each stream's longest true length in the batch
(`gdpa_scale = batch_maxlen`, docs/models.md) or the stream's `max_len` (`t_max`, batch independent).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kunbench.backends.common import RankingModel
from kunbench.backends.gdpa_ops import resolve_gdpa
from kunbench.backends.gdpa_pffn import GDPAPFFNBlock
from kunbench.backends.hsp import HSP, PMASummary
from kunbench.backends.input_layer import InputLayer, SeqTokens, context_token_count, input_layer_flops
from kunbench.backends.kunlun_config import PRESETS, KunlunConfig, StreamConfig
from kunbench.backends.modules import MLP, PMA, Gate, TokenLinear
from kunbench.backends.mowe import MixtureOfWukongExperts
from kunbench.backends.registry import BackendSpec
from kunbench.backends.packed import Packed
from kunbench.backends.rote import full_tables, packed_rotary_tables, rotary_tables
from kunbench.backends.window_attention import WindowSelfAttention
from kunbench.data.batch import Batch
from kunbench.data.manifest import DatasetSchema

__all__ = ["KunlunConfig", "KunlunModel", "PRESETS", "SPEC", "StreamConfig", "build", "flops_per_example"]


def make_summary(config: KunlunConfig, sc: StreamConfig) -> nn.Module:
    if config.summary == "pma":
        return PMASummary(sc.d, config.d, sc.heads, sc.n_tok, config.attention_kernel, config.row_groups)
    return HSP(sc.d, config.d, sc.heads, sc.n_tok, config.seed_factor, config.sumkron_k,
               sumkron=config.sumkron == "on", seed_attention=config.seed_attention,
               seed_activation=config.seed_activation, scale_position=config.gdpa_scale_position,
               gdpa_impl=config.gdpa, attention_kernel=config.attention_kernel, row_groups=config.row_groups)


def weight_generation_layers(config: KunlunConfig, stream_cfgs) -> set[int]:
    """Global layers where at least one stream runs the GDPA PFFN (and so needs `X_sum`)."""
    return {layer for sc in stream_cfgs for layer in range(sc.layers) if config.runs(layer)[0]}


def summary_flops(config: KunlunConfig, sc: StreamConfig, length):
    if config.summary == "pma":
        return PMASummary.flops(length, sc.d, config.d, sc.n_tok)
    return HSP.flops(length, sc.d, config.d, sc.n_tok, config.seed_factor, config.sumkron_k, config.sumkron == "on")


def final_summary_needed(config: KunlunConfig, sc: StreamConfig) -> bool:
    return not config.runs(sc.layers - 1)[2]


class StreamModel(nn.Module):
    """One event stream's modules: `pffn[l]`, `attn[l]`, `summary[l]` for the layers that run them
    (ModuleDicts keyed by the layer index), plus `final_summary` when the head needs one."""

    def __init__(self, config: KunlunConfig, sc: StreamConfig):
        super().__init__()
        self.sc = sc
        d = config.d
        self.proj = nn.Linear(d, sc.d, bias=False) if sc.d != d else None
        self.pffn, self.attn, self.summary = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        window = sc.window if config.attention == "window" else None
        for layer in range(sc.layers):
            run_pffn, run_attn, fresh = config.runs(layer)
            key = str(layer)
            if run_pffn:
                self.pffn[key] = GDPAPFFNBlock(config.n_sum * d, sc.d, sc.heads, config.dff, config.kv_hidden,
                                               config.activations_for(sc.heads), config.gdpa_scale_position,
                                               config.gdpa, config.row_groups)
            if run_attn:
                self.attn[key] = WindowSelfAttention(sc.d, sc.heads, window, config.attention_act,
                                                     config.attention_kernel, config.gdpa,
                                                     config.gdpa_scale_position)
            if fresh:
                self.summary[key] = make_summary(config, sc)
        self.final_summary = make_summary(config, sc) if final_summary_needed(config, sc) else None


@dataclasses.dataclass
class StreamState:
    s: torch.Tensor  # [B, T, d_e], or [N, d_e] packed
    mask: "torch.Tensor | Packed"  # [B, T] bool, or the packed stream's plan
    rot: tuple[torch.Tensor, torch.Tensor] | None
    maxlen: torch.Tensor  # 0-d: the longest true length in the batch
    scale: float | torch.Tensor  # GDPA s for seed pooling (and the PFFN unless pffn_scale says otherwise)
    pffn_scale: float | torch.Tensor
    summary: torch.Tensor | None = None
    stale: bool = False
    plan: dict = dataclasses.field(default_factory=dict)  # attention masks shared by the layers


class KunlunModel(RankingModel):
    def __init__(self, config: KunlunConfig, schema: DatasetSchema):
        super().__init__()
        self.config = config
        d = config.d
        self.event_types = tuple(schema.event_types)
        self.stream_cfgs = [config.stream_for(et) for et in self.event_types]
        self.input_layer = InputLayer(schema, d, config.max_rows_per_field, config.n_dense_tokens,
                                      sparse=config.sparse_embeddings,
                                      seq_max_len={et: sc.max_len for et, sc in zip(schema.event_types,
                                                                                      self.stream_cfgs)},
                                      merge="none", packed=config.sequence_layout == "packed")
        self.n_summary_tokens = sum(sc.n_tok for sc in self.stream_cfgs)
        n_x = self.input_layer.n_context_tokens
        n_w = config.n_F + config.n_L
        # X_sum only where some stream runs a GDPA PFFN (it is the K/V generator's input)
        self.lce, self.gate, self.mowe = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleList()
        for layer in range(config.n_layers):
            n_in = n_x if layer == 0 else n_w
            if layer in weight_generation_layers(config, self.stream_cfgs):
                self.lce[str(layer)] = TokenLinear(n_in, config.n_sum)
                self.gate[str(layer)] = Gate(d)
            self.mowe.append(MixtureOfWukongExperts(n_in + self.n_summary_tokens, d, config.experts,
                                                    config.expert_layers, config.n_F, config.n_L, config.fm_k,
                                                    config.fmb_mlp, config.act, config.fm_y))
        self.streams = nn.ModuleList([StreamModel(config, sc) for sc in self.stream_cfgs])
        self.head = MLP([(n_w + self.n_summary_tokens) * d, *config.head_mlp, 1], act=config.act)

    def kernels(self, device, dtype=None) -> dict[str, str]:
        attention = ("gdpa:" + resolve_gdpa(self.config.gdpa, device, dtype).value if self.config.attention_act
                     else self.config.attention_kernel)
        return {"gdpa": resolve_gdpa(self.config.gdpa, device, dtype).value, "window_attention": attention}

    # ---- inputs ------------------------------------------------------------------------------
    def _stream_state(self, seq: SeqTokens, module: StreamModel, sc: StreamConfig, request_ts: torch.Tensor,
                      ) -> StreamState:
        cfg = self.config
        if seq.packed is not None:
            return self._packed_state(seq, module, sc, request_ts)
        tokens, mask, ts = seq.tokens, seq.mask, seq.ts
        if tokens.shape[1] == 0:  # nobody in the batch has this event type: one padded slot
            b = tokens.shape[0]
            tokens = tokens.new_zeros(b, 1, tokens.shape[2])
            mask = torch.zeros(b, 1, dtype=torch.bool, device=tokens.device)
            ts = torch.zeros(b, 1, dtype=seq.ts.dtype, device=tokens.device)
        s = tokens if module.proj is None else module.proj(tokens)
        s = s * mask[..., None]  # padded rows start at zero (their values never matter)
        # the batch's longest kept row stays on the device (a 0-d tensor): no host read, and no
        # per-batch constant for torch.compile to specialize on
        maxlen = mask.sum(1).max()
        scale_len = maxlen.clamp(min=1).to(torch.float32) if cfg.gdpa_scale == "batch_maxlen" else max(sc.max_len, 1)
        rot = None
        if module.attn:  # tables built once per stream, shared by Q and K of all its layers
            rot = rotary_tables(cfg.rote, ts, request_ts, sc.d // sc.heads, t_scale=cfg.t_scale,
                                rope_base=cfg.rope_base, time_base=cfg.rote_time_base, dtype=s.dtype)
            rot = None if rot is None else full_tables(*rot, sc.heads)
        scale = 1.0 / scale_len
        return StreamState(s, mask, rot, maxlen, scale, 1.0 / cfg.dff if cfg.pffn_scale == "n_kv" else scale)

    def _packed_state(self, seq: SeqTokens, module: StreamModel, sc: StreamConfig, request_ts: torch.Tensor
                      ) -> StreamState:
        """A packed stream (`sequence_layout = packed`): its `mask` slot holds the `Packed` plan."""
        cfg, p = self.config, seq.packed
        s = seq.tokens if module.proj is None else module.proj(seq.tokens)  # [N, d_e]
        maxlen = p.lengths.max() if p.batch else p.lengths.new_zeros(())
        scale_len = maxlen.clamp(min=1).to(torch.float32) if cfg.gdpa_scale == "batch_maxlen" else max(sc.max_len, 1)
        rot = None
        if module.attn:
            rot = packed_rotary_tables(cfg.rote, p.pos, seq.ts, request_ts[p.row], sc.d // sc.heads,
                                       t_scale=cfg.t_scale, rope_base=cfg.rope_base, time_base=cfg.rote_time_base,
                                       dtype=s.dtype)
            rot = None if rot is None else full_tables(*rot, sc.heads)
        scale = 1.0 / scale_len
        return StreamState(s, p, rot, maxlen, scale, 1.0 / cfg.dff if cfg.pffn_scale == "n_kv" else scale)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        inp = self.input_layer(batch)
        x = inp.context
        states = [self._stream_state(seq, module, sc, batch.request_ts)
                  for seq, module, sc in zip(inp.sequences, self.streams, self.stream_cfgs)]
        for layer in range(cfg.n_layers):
            key = str(layer)
            x_sum_flat = self.gate[key](self.lce[key](x)).flatten(1) if key in self.lce else None
            for st, module, sc in zip(states, self.streams, self.stream_cfgs):
                if layer >= sc.layers:
                    continue
                if key in module.pffn:
                    st.s = module.pffn[key](st.s, st.mask, x_sum_flat, st.pffn_scale)
                if key in module.attn:
                    st.s = module.attn[key](st.s, st.mask, st.rot, st.maxlen, st.plan)
                if key in module.summary:
                    st.summary, st.stale = module.summary[key](st.s, st.mask, st.scale), False
                else:
                    st.stale = True
            x = self.mowe[layer](torch.cat([x, *(st.summary for st in states)], dim=1))
        for st, module in zip(states, self.streams):
            if st.stale:
                st.summary = module.final_summary(st.s, st.mask, st.scale)
        feats = torch.cat([x.flatten(1), *(st.summary.flatten(1) for st in states)], dim=1)
        return self.head(feats).squeeze(-1).float()


def build(config: KunlunConfig, schema: DatasetSchema) -> KunlunModel:
    return KunlunModel(config.validate(), schema)


# ---- analytic FLOPs (docs/models.md 4) --------------------------------------------------------------
def stream_flops(config: KunlunConfig, sc: StreamConfig, length: torch.Tensor) -> torch.Tensor:
    """Forward matmul FLOPs of one stream per example at true kept length `length` (float64 [B])."""
    d = config.d
    window = sc.window if config.attention == "window" else None
    f = torch.zeros_like(length)
    if sc.d != d:
        f = f + 2 * length * d * sc.d
    for layer in range(sc.layers):
        run_pffn, run_attn, fresh = config.runs(layer)
        if run_pffn:
            f = f + GDPAPFFNBlock.flops(length, sc.d, config.dff, config.n_sum * d, config.kv_hidden)
        if run_attn:
            f = f + WindowSelfAttention.flops(length, sc.d, window)
        if fresh:
            f = f + summary_flops(config, sc, length)
    if final_summary_needed(config, sc):
        f = f + summary_flops(config, sc, length)
    return f


def summary_modules(config: KunlunConfig, sc: StreamConfig) -> int:
    return sum(config.runs(layer)[2] for layer in range(sc.layers)) + final_summary_needed(config, sc)


def flops_breakdown(config: KunlunConfig, schema: DatasetSchema, batch: Batch) -> dict[str, torch.Tensor]:
    """Per-example forward FLOPs by part: `global` (input layer, LCE/Gate, MoWE, head) and one
    entry per event stream (its projection, PFFN, attention and summaries); batch-shared PMA seed
    projections (summary = pma) are split over the batch."""
    config = config.validate()
    d, b = config.d, batch.batch_size
    n_x = context_token_count(schema, config.n_dense_tokens)
    n_w = config.n_F + config.n_L
    scs = config.stream_configs(schema)
    n_summ = sum(sc.n_tok for sc in scs.values())
    const = input_layer_flops(schema, d, config.n_dense_tokens)
    wg_layers = weight_generation_layers(config, scs.values())
    for layer in range(config.n_layers):
        n_in = n_x if layer == 0 else n_w
        if layer in wg_layers:
            const += TokenLinear.flops(n_in, config.n_sum, d) + Gate.flops(config.n_sum, d)
        const += MixtureOfWukongExperts.flops(n_in + n_summ, d, config.experts, config.expert_layers, config.n_F,
                                              config.n_L, config.fm_k, config.fmb_mlp, config.fm_y)
    const += MLP.flops([(n_w + n_summ) * d, *config.head_mlp, 1])
    out = {"global": torch.full((b,), float(const), dtype=torch.float64)}
    for et, sc in scs.items():
        length = batch.sequences[et].lengths.cpu().clamp(max=sc.max_len).to(torch.float64)
        f = stream_flops(config, sc, length)
        if config.summary == "pma":
            f = f + summary_modules(config, sc) * PMA.shared_flops(sc.d, sc.n_tok) / max(b, 1)
        out[et] = f
    return out


def flops_per_example(config: KunlunConfig, schema: DatasetSchema, batch: Batch) -> torch.Tensor:
    """Forward matmul FLOPs per example on true, unpadded lengths (2 per multiply-add; windowed
    attention counts `min(T, 2w + 1)` keys per query, GDPA `4 d_h H Lq Lk`)."""
    return sum(flops_breakdown(config, schema, batch).values())


def max_lengths(config: KunlunConfig, schema: DatasetSchema | None) -> int | dict[str, int]:
    """Each stream's own `max_len` (the longest one without a schema to name the streams)."""
    if schema is None:
        return config.longest_stream_len
    return {et: sc.max_len for et, sc in config.stream_configs(schema).items()}


SPEC = BackendSpec(
    name="kunlun",
    description="Kunlun: ROTE, GDPA PFFN, HSP summaries, sliding-window attention, CompSkip, "
                "per-event streams, Mixture of Wukong Experts",
    config_cls=KunlunConfig,
    presets=PRESETS,
    default_preset="small",
    build=build,
    flops_per_example=flops_per_example,
    max_lengths_of=max_lengths,
    notes_of=lambda config, schema: config.notes(schema),
    width_keys=("d", "dff", "fm_k", "fmb_mlp", "head_mlp", "kv_hidden", "n_F", "n_L", "stream.d", "streams.*.d"),
)
