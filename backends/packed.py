"""Packed sequences: the real events of a batch's rows back to back, `[N, ...]`, no padding.

Kunlun runs each event stream packed (`sequence_layout = packed`): every per-token op (projections,
norms, ROTE, the PFFN's products, the summaries' keys) then costs the batch's real events, not
`B x` its longest row. On `small` the click histories fill 37% of their padded width, so a padded
stream spends most of its work on padding that the analytic FLOPs never count.

A `Packed` stream carries, beside its values, each token's row and position in the row, and the
row offsets. Products that need a per-row shape (a row's own K/V, seed pooling) run on a padded
view (`to_padded` / `from_padded`), which costs one scatter and one gather of the tokens. Every
helper here reads only shapes on the host: N is the values' length, and the longest row is a host
integer that the batch carries.

Row groups (`RowGroups`, `to_groups` / `from_groups`): with the batch's `length_slices` (the
longest row of each eighth of the rows sorted by length, host ints), the rows are cut into a few
groups of similar length, each padded only to its own longest row. A padded product then does
about 1.5x the real work on `small`'s click and conversion histories with two groups (1.3x with
three) instead of 2.3-2.7x, for a few more (smaller) calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kunbench.ops.jagged import lengths_of, segment_ids


@dataclass
class Packed:
    row: torch.Tensor  # [N] int64, the row of each token
    pos: torch.Tensor  # [N] int64, its position in the row (0 = oldest kept)
    offsets: torch.Tensor  # [B+1]
    lengths: torch.Tensor  # [B]
    longest: int  # host int: at least the longest row (the padded width when one is needed)
    # host ints: upper bounds of the longest kept row in each of `len(slices)` equal-count slices
    # of the rows sorted by length (`ops.jagged.slice_maxima`); () when the batch carried none
    slices: tuple[int, ...] = ()
    # per padded width: (slot of each token, token of each slot), built once per forward pass
    slot_maps: dict = field(default_factory=dict, repr=False)

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    def slots(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(slot [N], source [B width])`: token `i` sits at flat slot `row width + pos` of a
        `[B, width]` view, and slot `j` holds token `source[j]`, or `N` (a zero row) in padding."""
        if width not in self.slot_maps:
            slot = self.row * width + self.pos
            self.slot_maps[width] = (slot, _source_map(slot, self.batch * width))
        return self.slot_maps[width]

    def groups(self, max_groups: int, width: int) -> "RowGroups | None":
        """The rows cut into at most `max_groups` groups of similar length, for tokens of `width`
        features (None: one padded view at `longest` is as good, or the batch carried no `slices`)."""
        min_saving = -(-GROUP_MIN_ELEMENTS // max(width, 1))
        key = ("groups", max_groups, min_saving)
        if key not in self.slot_maps:
            bounds = choose_groups(self.slices, self.batch, self.longest, max_groups, min_saving)
            self.slot_maps[key] = None if len(bounds) < 2 else RowGroups.build(self, bounds)
        return self.slot_maps[key]


def plan(offsets: torch.Tensor, n: int, longest: int, slices: tuple[int, ...] = ()) -> Packed:
    """Row and position of each of the `n` packed tokens (no host read of the offsets)."""
    row = segment_ids(offsets, n)
    pos = torch.arange(n, device=offsets.device) - offsets[row]
    return Packed(row, pos, offsets, lengths_of(offsets), int(longest), tuple(int(x) for x in slices))


def _source_map(slot: torch.Tensor, size: int) -> torch.Tensor:
    """`[size]`: the token held at each slot, or N (a zero row) where `slot` puts none."""
    n = slot.shape[0]
    source = torch.full((size,), n, dtype=torch.int64, device=slot.device)
    return source.index_copy_(0, slot, torch.arange(n, device=slot.device))


# more groups must save this share of the one-group padded area, and at least this many padded
# elements (slots x token width): each group costs its own calls, which small tensors (the `tiny`
# presets: at most 256 x 32 slots of 16 features) never win back
GROUP_MIN_SAVING = 0.05
GROUP_MIN_ELEMENTS = 1 << 18


def choose_groups(slices: tuple[int, ...], batch: int, longest: int, max_groups: int, min_saving: int = 0
                  ) -> tuple[tuple[int, int, int], ...]:
    """`(start, end, width)` per group, over positions in the rows sorted by length: runs of whole
    slices, chosen to pad the fewest slots (a small dynamic program on host ints). The fewest
    groups whose area is within `max(GROUP_MIN_SAVING x one-group area, min_saving)` slots of the
    best win."""
    s = len(slices)
    if s == 0 or max_groups < 2 or batch == 0:
        return ((0, batch, max(longest, 1)),)
    ends = [(i + 1) * batch // s for i in range(s)]
    starts = [0, *ends[:-1]]
    width = [max(min(w, longest), 1) for w in slices]
    width = [max(width[: i + 1]) for i in range(s)]  # sorted rows: an upper bound never shrinks
    inf = float("inf")
    # best[g][i]: least area covering slices 0..i-1 with g groups; cut[g][i]: where the last began
    best = [[inf] * (s + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (s + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for i in range(1, s + 1):
            for j in range(i):
                area = best[g - 1][j] + (ends[i - 1] - starts[j]) * width[i - 1]
                if area < best[g][i]:
                    best[g][i], cut[g][i] = area, j
    floor = min(best[g][s] for g in range(1, max_groups + 1))
    slack = max(GROUP_MIN_SAVING * best[1][s], min_saving)
    g = next(g for g in range(1, max_groups + 1) if best[g][s] <= floor + slack)
    bounds, i = [], s
    while g:
        j = cut[g][i]
        bounds.append((starts[j], ends[i - 1], width[i - 1]))
        i, g = j, g - 1
    return tuple(reversed(bounds))


@dataclass
class RowGroups:
    """Group `g` is rows `order[start:end]` (sorted by kept length), padded to `width`, and held
    at slots `base_g .. base_g + (end - start) width - 1` of one flat grouped layout."""

    bounds: tuple[tuple[int, int, int], ...]  # host ints: (start, end, width) per group
    order: torch.Tensor  # [B] rows by kept length (a stable sort: deterministic)
    inverse: torch.Tensor  # [B] each row's position in `order`
    slot: torch.Tensor  # [N] each token's flat slot
    source: torch.Tensor  # [S] each slot's token, or N (a zero row) in padding
    masks: list[torch.Tensor]  # [n_g, width_g] bool per group: True on real events

    @staticmethod
    def build(p: Packed, bounds) -> "RowGroups":
        dev = p.row.device
        lengths, order = torch.sort(p.lengths, stable=True)
        inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(p.batch, device=dev))
        base, at = [], 0
        for start, end, width in bounds:
            base.append(at + torch.arange(end - start, device=dev) * width)
            at += (end - start) * width
        row_base = torch.cat(base).index_select(0, inverse)  # [B] first slot of each row
        slot = row_base.index_select(0, p.row) + p.pos
        masks = [torch.arange(w, device=dev)[None, :] < lengths[a:b, None] for a, b, w in bounds]
        return RowGroups(tuple(bounds), order, inverse, slot, _source_map(slot, at), masks)

    def rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A per-row tensor `[B, ...]` split by group (rows in group order)."""
        return [x.index_select(0, self.order[a:b]) for a, b, _ in self.bounds]

    def unrows(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Per-group per-row results -> `[B, ...]` in row order."""
        return torch.cat(xs).index_select(0, self.inverse)


def _gather_rows(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """`x [M, ...]` read at `source` (values in `0..M`, where `M` reads a zero row)."""
    ext = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])
    return ext.index_select(0, source)


def to_padded(x: torch.Tensor, p: Packed, width: int | None = None) -> torch.Tensor:
    """`[N, ...]` -> left-aligned `[B, T, ...]` with zeros in the padding (the one-group case of
    `to_groups`, rows in their own order)."""
    t = max(p.longest if width is None else width, 1)
    slot, source = p.slots(t)
    (out,) = _ToGroups.apply(x, slot, source, ((0, p.batch, t),))
    return out


def from_padded(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """Left-aligned `[B, T, ...]` -> `[N, ...]` (the real positions only)."""
    slot, source = p.slots(x.shape[1])
    return _FromGroups.apply(slot, source, x)


def padded_mask(p: Packed, width: int | None = None) -> torch.Tensor:
    t = max(p.longest if width is None else width, 1)
    return torch.arange(t, device=p.lengths.device)[None, :] < p.lengths[:, None]


def _flat(xs, rest) -> torch.Tensor:
    """Groups `[n_g, width_g, *rest]` as one `[S, *rest]` (no copy for a single group)."""
    if len(xs) == 1:
        return xs[0].reshape(-1, *rest)
    return torch.cat([x.reshape(-1, *rest) for x in xs])


def _split(flat: torch.Tensor, shapes) -> tuple[torch.Tensor, ...]:
    """`[S, ...]` -> one view per group shape `[n_g, width_g, ...]` (the inverse of `_flat`)."""
    if len(shapes) == 1:
        return (flat.view(shapes[0]),)
    out, at = [], 0
    for shape in shapes:
        out.append(flat[at:at + shape[0] * shape[1]].view(shape))
        at += shape[0] * shape[1]
    return tuple(out)


class _ToGroups(torch.autograd.Function):
    """`[N, ...]` -> one `[n_g, width_g, ...]` view per group, all of one gathered buffer. Both
    directions are gathers: every token has exactly one slot, so the gradient of the scatter is a
    gather too (index_put's backward, and the accumulating index_put in the backward of a gather,
    were 1.8x and 3.3x slower on a CPU, forward plus backward)."""

    @staticmethod
    def forward(ctx, x, slot, source, bounds):
        ctx.save_for_backward(slot)
        ctx.rest = x.shape[1:]
        return _split(_gather_rows(x, source), [(end - start, width, *x.shape[1:]) for start, end, width in bounds])

    @staticmethod
    def backward(ctx, *grads):
        (slot,) = ctx.saved_tensors
        return _flat(grads, ctx.rest).index_select(0, slot), None, None, None


class _FromGroups(torch.autograd.Function):
    @staticmethod
    def forward(ctx, slot, source, *xs):
        ctx.save_for_backward(source)
        ctx.shapes = [x.shape for x in xs]
        return _flat(xs, xs[0].shape[2:]).index_select(0, slot)

    @staticmethod
    def backward(ctx, grad):
        (source,) = ctx.saved_tensors
        return (None, None, *_split(_gather_rows(grad, source), ctx.shapes))


def to_groups(x: torch.Tensor, groups: RowGroups) -> list[torch.Tensor]:
    """`[N, ...]` -> left-aligned `[n_g, width_g, ...]` per group, zeros in the padding."""
    return list(_ToGroups.apply(x, groups.slot, groups.source, groups.bounds))


def from_groups(xs: list[torch.Tensor], groups: RowGroups) -> torch.Tensor:
    """Per-group left-aligned `[n_g, width_g, ...]` -> `[N, ...]` (the real positions only)."""
    return _FromGroups.apply(groups.slot, groups.source, *xs)


class _NeighbourBlocks(torch.autograd.Function):
    """`x [(n + 2) c, H, dh]` -> `[n, H, 3c, dh]`: block `j` is rows `j c .. j c + 3c - 1`, i.e.
    chunks `j - 1, j, j + 1` of the unpadded rows (a strided view, no copy). The backward adds
    the three chunk gradients back in place of unfold's generic backward (3x cheaper on a CPU)."""

    @staticmethod
    def forward(ctx, x, c: int):
        rows, h, dh = x.shape
        n = rows // c - 2
        ctx.c, ctx.shape = c, x.shape
        return x.as_strided((n, 3 * c, h, dh), (c * h * dh, h * dh, dh, 1)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        c = ctx.c
        rows, h, dh = ctx.shape
        n = rows // c - 2
        g = grad.transpose(1, 2).reshape(n, 3, c, h, dh)
        out = grad.new_zeros((n + 2, c, h, dh))
        out[:n] += g[:, 0]
        out[1:n + 1] += g[:, 1]
        out[2:] += g[:, 2]
        return out.view(rows, h, dh), None


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Packed, window: int,
                     cache: dict) -> torch.Tensor:
    """Softmax self-attention of packed `q, k, v [N, H, dh]` over keys of the same row with
    `|i - j| <= window`. Tokens are cut into chunks of `c = max(w, 8)`; chunk `j` attends to the
    key block of chunks `j - 1, j, j + 1` (`3c` rows, a view of the keys with one guard chunk at
    either end), masked to its own row and the band. Work and memory grow as `N w`, and padding
    costs nothing."""
    n, h, dh = q.shape
    c = max(window, 8)
    kw = 3 * c
    nc = -(-max(n, 1) // c)
    tp = nc * c
    key = ("packed_window", window)
    if key not in cache:
        row = F.pad(p.row, (0, tp - n), value=-1)  # padded query slots: row -1
        krow = F.pad(p.row, (c, tp - n + c), value=-2)  # guard and padded keys: row -2
        qrow = row.view(nc, c, 1)
        kblock = krow.unfold(0, kw, c)  # [nc, 3c]
        qi = torch.arange(c, device=q.device).view(1, c, 1)
        kj = torch.arange(kw, device=q.device).view(1, 1, kw) - c
        band = (qi - kj).abs() <= window
        keep = (qrow == kblock[:, None, :]) & band
        keep = keep | (qi == kj)  # a query always sees its own slot: no empty softmax row
        cache[key] = keep[:, None]  # [nc, 1, c, 3c]
    qc = F.pad(q, (0, 0, 0, 0, 0, tp - n)).view(nc, c, h, dh).transpose(1, 2)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return _NeighbourBlocks.apply(F.pad(x, (0, 0, 0, 0, c, tp - n + c)), c)  # [nc, H, 3c, dh]

    out = F.scaled_dot_product_attention(qc, blocks(k), blocks(v), attn_mask=cache[key])
    return out.transpose(1, 2).reshape(tp, h, dh)[:n]
