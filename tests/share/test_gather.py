import torch

from netshrink.share.gather import gather_rows, mean_over_members


def test_gradient_is_each_rows_members_summed_and_deterministic():
    torch.manual_seed(0)
    table = torch.randn(32, 3, requires_grad=True)
    indices = torch.randint(0, 32, (300, 784))
    upstream = torch.randn(300, 784, 3)
    grads = []
    for threads in (2, 2, 1):
        torch.set_num_threads(threads)
        table.grad = None
        (gather_rows(table, indices) * upstream).sum().backward()
        grads.append(table.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads)  # bit for bit, every call
    expected = torch.zeros(32, 3, dtype=torch.float64)
    expected.index_add_(0, indices.reshape(-1), upstream.reshape(-1, 3).double())
    assert torch.allclose(grads[0].double(), expected, atol=1e-3)
    assert torch.equal(gather_rows(table, indices), table[indices])
    with torch.no_grad():
        assert torch.equal(gather_rows(table, indices), table[indices])


def test_mean_over_members_divides_the_gradient_only():
    table = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    members = torch.tensor([4.0, 0.0, 2.0])
    out = mean_over_members(table, members)
    assert torch.equal(out, table)  # the forward value is untouched
    out.backward(torch.tensor([8.0, 5.0, 1.0]))
    assert table.grad.tolist() == [2.0, 5.0, 0.5]  # no members: nothing to divide
    with torch.no_grad():
        assert mean_over_members(table, members) is table
