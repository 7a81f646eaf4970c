import torch

from netshrink.share.gather import gather_rows


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
