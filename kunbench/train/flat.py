"""Dense parameters as views of one flat buffer, and their gradients as views of another.

Why: a model with ~140 small dense tensors costs ~140 dispatched ops per optimizer stage on a CPU,
where `torch._foreach_*` falls back to a per-tensor loop (clip's norms and scaling, AdamW's step
counters). That was ~1,900 aten ops a Kunlun step spent outside forward and backward. With one
flat tensor, clipping is one norm and one multiply and AdamW is one fused op; backward writes
each gradient into its slice (an in-place add where autograd would otherwise hand over a new
tensor), and zeroing is one fill. The same trick as apex's flat master weights and FSDP's
FlatParameter.

Numbers are unchanged: AdamW is element-wise, and a gradient added into a zeroed slice is the
gradient itself. Only the clip norm is summed in another order, which moves the clip factor in
its last bits on the steps where clipping is active. One semantic difference: a parameter that
gets no gradient in a step has a zero gradient here, not None, so AdamW still decays it and
applies its momentum (per-tensor AdamW skips it). Every shipped backend uses all its dense
parameters in every step (a test checks this); a plugin backend with conditionally unused
parameters sees that difference.

Each slice starts on a 16-element boundary (64 bytes in fp32), as FSDP's FlatParameter pads, so a
parameter with an odd size does not leave every later one unaligned for vectorized kernels. The
gaps hold zeros and their gradients stay zero, so they never move.
"""

from __future__ import annotations

import torch

from kunbench.errors import KunbenchError

ALIGN = 16  # elements: each slice starts on a 64-byte boundary in fp32


class FlatDense:
    """Owns `param` (the flat leaf the dense optimizer updates, with `param.grad`) and keeps every
    parameter's `.data` and `.grad` views into them."""

    def __init__(self, params: list[torch.Tensor]):
        first = params[0]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() // ALIGN) * ALIGN
        flat = torch.zeros(total, dtype=first.dtype, device=first.device)
        grad = torch.zeros_like(flat)
        self.params = params
        self._slices: list[torch.Tensor] = []
        self._data_ptrs: list[int] = []
        for p, offset in zip(params, offsets):
            n = p.numel()
            with torch.no_grad():
                flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            self._data_ptrs.append(p.data_ptr())
            view = grad[offset:offset + n].view_as(p)
            p.grad = view
            self._slices.append(view)
        self.param = flat.requires_grad_(first.requires_grad)
        self.param.grad = grad

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        """One dtype, one device, floating point, dense: what one flat tensor can hold."""
        if not params:
            return False
        p0 = params[0]
        return all(p.dtype == p0.dtype and p.device == p0.device and p.layout == torch.strided
                   and p.is_floating_point() for p in params)

    @torch.no_grad()
    def gather_grads(self) -> None:
        """Re-attach gradients that something replaced (`zero_grad(set_to_none=True)` on the model,
        or a hook that assigned a new tensor): their values move into the flat buffer, so the
        optimizer never steps on stale zeros. A host-side pointer check per tensor, no device work
        in the usual case."""
        for p, view, ptr in zip(self.params, self._slices, self._data_ptrs):
            if p.numel() and p.data_ptr() != ptr:
                raise KunbenchError("a dense parameter was moved or replaced after its optimizer was built "
                                    "(build the optimizers after model.to(device))")
            g = p.grad
            if g is None:
                view.zero_()
            elif g.data_ptr() != view.data_ptr() or g.shape != view.shape:
                view.copy_(g.to_dense() if g.is_sparse else g)
            else:
                continue
            p.grad = view

    def zero_grad(self) -> None:
        self.param.grad.zero_()
