"""`table[indices]` with a deterministic backward, and the member-mean step of a shared value.

The backward of advanced indexing on CPU accumulates in an order that changes from call to call
(measured here: a 32-entry codebook's gradient differed by up to 4e-4 between identical calls),
which would break "same recipe, data and seed -> same file". `torch.bincount` sums each row's
members in a fixed order, and about ten times faster (`row_sums`).

A shared value's gradient is the sum of its members' gradients (Han et al. 2016), so with plain
SGD it moves by as many per-weight steps as it has members: a 16k-member centroid of an
unpruned 266k-weight layer took a step ~16k times a weight's and training diverged (LeNet-300-100,
4 bits, val 90.17% -> 16.22% after 2 epochs at lr 0.0005). `mean_over_members` divides each
value's gradient by its member count: the step is then the tied weights' plain SGD step
projected onto the shared values (each moves by its members' mean gradient), whatever the
cluster sizes, at the learning rate free weights would fine-tune with.
"""

import torch


def row_sums(indices: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, columns): for each row of a table, `values` (n, columns) summed over the n
    positions whose flat `indices` (n,) choose it; in a fixed order."""
    sums = [torch.bincount(indices, weights=c, minlength=rows) for c in values.unbind(1)]
    return torch.stack(sums, 1)


def trains(table: torch.Tensor) -> bool:
    """Whether a forward pass through `table` is recorded for a backward (not inference, not an
    export's trace)."""
    return torch.is_grad_enabled() and table.requires_grad and not torch.jit.is_tracing()


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.table_shape = table.shape
        return table[indices]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (indices,) = ctx.saved_tensors
        rows, flat = ctx.table_shape[0], indices.reshape(-1)
        sums = row_sums(flat, grad.reshape(flat.numel(), -1), rows)
        return sums.reshape(ctx.table_shape).to(grad.dtype), None


def gather_rows(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`table[indices]` (rows of `table` chosen by an integer tensor of any shape); its gradient
    with respect to `table` is summed per row deterministically."""
    if trains(table):
        return _GatherRows.apply(table, indices)
    return table[indices]  # inference and export see plain indexing


class _MeanOverMembers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(members)
        return table.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (members,) = ctx.saved_tensors
        return grad / members.clamp(min=1).to(grad.dtype), None


def mean_over_members(table: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """`table` itself, whose gradient is divided entry-wise by `members` (its shape, or one that
    broadcasts to it): the number of kept weights each entry stands for. An entry without
    members has no gradient to divide."""
    if trains(table):
        return _MeanOverMembers.apply(table, members)
    return table
