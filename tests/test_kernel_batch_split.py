"""With more threads than directions, the kernel cuts each direction's batch into slices.

recurrence.cpp's for_each_unit runs min(threads / directions, batch) slices per direction, each
its own time loop over rows lo..hi. Training's two threads and two directions make one slice;
here more threads make several, of unequal sizes, down to one row.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.model import recurrence


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize(("directions", "batch", "threads"), [(1, 7, 4), (2, 7, 4), (2, 3, 8)])
def test_batch_slices_give_the_pytorch_loops_states_and_gradients(
    directions, batch, threads, dtype, tolerance, monkeypatch
):
    kernel = recurrence.compiled()
    assert kernel is not None
    assert min(threads // directions, batch) > 1  # the branch under test: several slices per direction
    steps, hidden = 11, 6
    g = torch.Generator().manual_seed(batch * directions)
    pre = torch.randn(directions, steps * batch, hidden, generator=g, dtype=dtype)
    weight = torch.randn(directions, hidden, hidden, generator=g, dtype=dtype) * 0.5
    upstream = torch.randn(directions, steps, batch, hidden, generator=g, dtype=dtype)
    results = []
    previous = torch.get_num_threads()
    try:
        for chosen, n in ((kernel, threads), (False, 1)):
            monkeypatch.setattr(recurrence, "_KERNEL", chosen)
            torch.set_num_threads(n)
            x, w = pre.clone().requires_grad_(), weight.clone().requires_grad_()
            out = recurrence.TanhRecurrence.apply(x * 1, w, steps).view(directions, steps, batch, hidden)
            (out * upstream).sum().backward()
            results.append((out.detach(), x.grad, w.grad))
    finally:
        torch.set_num_threads(previous)
    for sliced, pytorch in zip(*results, strict=True):
        torch.testing.assert_close(sliced, pytorch, rtol=0, atol=tolerance)
