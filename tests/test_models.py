"""RNNClassifier: shapes, a readout that never reads padding, and enough capacity to learn."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.model.network import ModelConfig, RNNClassifier, predict_logits

VOCAB, CLASSES = 30, 4


def _model(**overrides) -> RNNClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, num_classes=CLASSES, embed_dim=6, hidden_dim=5, **overrides)
    return RNNClassifier(cfg).eval()


def _batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(2, VOCAB, (n,), generator=g)
    return ids, torch.tensor(lengths)


def _reference_logits(model: RNNClassifier, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each text alone, unpadded, through the model's own torch module (nn.RNN / GRU / LSTM),
    with the readout written out from its definition: the reference the batched path must match."""
    rows = []
    for row, n in enumerate(lengths.tolist()):
        out, h_n = model.rnn(model.embedding(ids[row, :n])[None])  # (1, n, D*H): no padding at all
        if model.cfg.readout == "final":
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n
            top = h_n.view(model.cfg.num_layers, model.num_directions, 1, model.cfg.hidden_dim)[-1]
            features = torch.cat(list(top), dim=-1)[0]
        elif model.cfg.readout == "mean":
            features = out[0].mean(0)
        else:
            features = out[0].max(0).values
        rows.append(model.head(features))
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("cell", "readout", "bidirectional", "num_layers"),
    list(itertools.product(["rnn", "gru", "lstm"], ["final", "mean", "max"], [False, True], [1, 2])),
)
def test_every_combination_gives_the_reference_logits(cell, readout, bidirectional, num_layers):
    """Eval mode: the padded batch's logits equal each text run alone through torch's module, in
    float64; train mode: the shape holds and dropout changes the logits."""
    model = _model(cell=cell, readout=readout, bidirectional=bidirectional, num_layers=num_layers, dropout=0.2)
    model = model.double()
    ids, lengths = _batch([7, 3, 1, 9], width=11)
    with torch.no_grad():
        logits = model(ids, lengths)
        expected = _reference_logits(model, ids, lengths)
    assert logits.shape == (4, CLASSES) and logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    model.train()
    with torch.no_grad():
        trained = model(ids, lengths)
    assert trained.shape == (4, CLASSES) and not torch.allclose(trained, logits)


def _unpadded_features(model: RNNClassifier, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The reference: run one sequence with no padding at all and read h_n of the top layer."""
    out, h_n = model.rnn(model.embedding(ids[:n])[None])  # (1, n, D*H)
    if isinstance(h_n, tuple):
        h_n = h_n[0]
    layers, dirs = model.cfg.num_layers, model.num_directions
    top = h_n.view(layers, dirs, 1, model.cfg.hidden_dim)[-1]
    if dirs == 2:
        # h_n's backward state is the one after reading the whole text right to left ...
        assert torch.allclose(top[1, 0], out[0, 0, model.cfg.hidden_dim :])
    return torch.cat(list(top), dim=-1)[0]


@pytest.mark.parametrize(("cell", "num_layers"), [("rnn", 1), ("rnn", 2), ("gru", 1), ("lstm", 2)])
def test_final_readout_equals_unpadded_states_in_both_directions(cell, num_layers):
    model = _model(cell=cell, bidirectional=True, num_layers=num_layers)
    ids, lengths = _batch([8, 3, 5, 1], width=12)
    logits = model(ids, lengths)
    seed_style = []
    for row, n in enumerate(lengths.tolist()):
        features = _unpadded_features(model, ids[row], n)
        assert torch.allclose(logits[row], model.head(features), atol=1e-6)
        out, _ = model.rnn(model.embedding(ids[row])[None])  # the padded row, read the seed's way
        seed_style.append(model.head(out[0, -1]))
    # ... which `out[:, -1, :]` on a padded batch is not.
    assert not torch.allclose(torch.stack(seed_style), logits, atol=1e-3)


@pytest.mark.parametrize("readout", ["final", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_the_logits(readout, bidirectional):
    model = _model(readout=readout, bidirectional=bidirectional, num_layers=2)
    ids, lengths = _batch([6, 2], width=6)
    wide = torch.zeros(2, 40, dtype=torch.long)
    wide[:, :6] = ids
    alone = torch.cat([model(ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(2)])
    assert torch.allclose(model(ids, lengths), model(wide, lengths), atol=1e-6)
    assert torch.allclose(model(wide, lengths), alone, atol=1e-6)
    assert torch.allclose(predict_logits(model, wide, lengths, batch_size=1), alone, atol=1e-6)


@pytest.mark.parametrize("lengths", [[9, 1, 4, 9, 6], [7, 7, 7]], ids=["padded", "no padding"])
@pytest.mark.parametrize("readout", ["final", "mean", "max"])
@pytest.mark.parametrize(("bidirectional", "num_layers"), [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_fused_tanh_rnn_matches_packed_nn_rnn_in_values_and_gradients(readout, bidirectional, num_layers, lengths):
    """The fast padded path and torch's packed nn.RNN agree on logits and on every gradient."""
    model = _model(readout=readout, bidirectional=bidirectional, num_layers=num_layers).double()
    ids, lengths = _batch(lengths, width=max(lengths))
    grads = []
    for features in (model._fused_features, model._packed_features):
        model.zero_grad()
        logits = model.head(features(ids, lengths))
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fused, fused_grads), (packed, packed_grads) = grads
    assert torch.allclose(fused, packed, atol=1e-10)
    for name, grad in packed_grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-10), name


def test_model_can_overfit_a_tiny_batch():
    model = _model(bidirectional=True, readout="final")
    ids, lengths = _batch([5, 7, 4, 6, 3, 8, 2, 5], width=8, seed=3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert (predict_logits(model, ids, lengths, 8).argmax(1) == labels).all()


def test_word_dropout_only_in_training_and_never_on_padding():
    model = _model(word_dropout=0.5)
    ids, lengths = _batch([4, 2], width=5)
    torch.manual_seed(1)
    assert torch.equal(model(ids, lengths), model(ids, lengths))  # eval mode: deterministic
    model.train()
    seen = []
    model.embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    model(ids, lengths)
    dropped = seen[0].t()  # the tanh RNN embeds time-major ids (T, B)
    assert ((dropped == 1) & (ids != 1)).any()
    assert torch.equal(dropped == 0, ids == 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"cell": "cnn"}, "cell must be one of"), ({"readout": "last"}, "readout must be"), ({"dropout": 1.0}, "dropout")],
)
def test_impossible_configurations_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        _model(**overrides)


def test_the_compiled_loop_and_the_pytorch_loop_agree(monkeypatch):
    """The C++ time loop builds here (g++ and ninja are part of the set-up) and matches the fallback."""
    from pipeline.model import recurrence

    assert recurrence.compiled() is not None
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(2, 30 * 16, 8, generator=g)
    weight = torch.randn(2, 8, 8, generator=g) * 0.5
    upstream = torch.randn(2, 30, 16, 8, generator=g)
    results = []
    for kernel in (recurrence.compiled(), False):
        monkeypatch.setattr(recurrence, "_KERNEL", kernel)
        x, w = pre.clone().requires_grad_(), weight.clone().requires_grad_()
        out = recurrence.TanhRecurrence.apply(x * 1, w, 30).view(2, 30, 16, 8)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad, w.grad))
    for compiled, pytorch in zip(*results, strict=True):
        assert torch.allclose(compiled, pytorch, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.7])
def test_the_compiled_dropout_mask_keeps_one_minus_p_scaled_and_follows_its_seed(p):
    from pipeline.model import recurrence

    x = torch.zeros(100, 32, 50)
    mask = recurrence.compiled().dropout_mask(x, p, 123)
    values = mask.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / (1 - p))]
    assert (mask == 0).float().mean().item() == pytest.approx(p, abs=0.01)
    assert torch.equal(mask, recurrence.compiled().dropout_mask(x, p, 123))
    assert not torch.equal(mask, recurrence.compiled().dropout_mask(x, p, 124))


def test_max_over_time_splits_the_gradient_among_ties_like_amax():
    from pipeline.model.network import MaxOverTime

    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    x[:, 1] = x.amax(1) + 1  # a maximum at step 1 ...
    x[0, 4, 2] = x[0, 1, 2]  # ... tied at step 4 for some units, as saturated tanh units tie at 1.0
    grad = torch.randn(2, 3, 4, dtype=torch.float64)
    ours, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    (MaxOverTime.apply(ours) * grad).sum().backward()
    (reference.amax(1) * grad).sum().backward()
    assert torch.allclose(ours.grad, reference.grad)
    assert ours.grad[0, 4, 2].abs().sum() > 0


@pytest.mark.parametrize(("bidirectional", "num_layers"), [(False, 1), (True, 1), (True, 2)])
def test_the_vocabulary_table_and_the_per_token_projection_agree(bidirectional, num_layers):
    """Looking each token's input projection up in a (D, V, H) table is the same arithmetic as
    projecting every token: equal states and gradients, and the padding row still learns nothing."""
    from pipeline.model.recurrence import fused_rnn

    model = _model(bidirectional=bidirectional, num_layers=num_layers).double()
    ids, lengths = _batch([9, 1, 4, 9, 6], width=11)
    upstream = torch.randn(model.num_directions, 11, 5, 5, dtype=torch.float64)
    results = []
    for table in (True, False):
        model.zero_grad()
        if table:
            out = fused_rnn(model.rnn, ids.t(), lengths, model.dropout, embedding=model.embedding.weight)
        else:
            out = fused_rnn(model.rnn, model.embedding(ids.t()), lengths, model.dropout)
        real = (torch.arange(11)[:, None] < lengths[None, :])[None, :, :, None]  # what a readout reads
        (out * upstream * real).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (looked_up, table_grads), (projected, token_grads) = results
    assert torch.allclose(looked_up, projected, atol=1e-12)
    assert table_grads.keys() == token_grads.keys()
    for name, grad in token_grads.items():
        assert torch.allclose(table_grads[name], grad, atol=1e-12), name
    assert torch.equal(table_grads["embedding.weight"][0], torch.zeros(6, dtype=torch.float64))


def test_the_table_is_used_only_where_the_embeddings_are_not_dropped(monkeypatch):
    """Embedding dropout needs each token's own embedding; eval mode and dropout 0 look tokens up."""
    from pipeline.model import network

    calls = []
    real_fused_rnn = network.fused_rnn
    monkeypatch.setattr(network, "fused_rnn", lambda *a, **k: calls.append("embedding" in k) or real_fused_rnn(*a, **k))
    ids, lengths = _batch([9, 1, 4, 9, 6], width=9)  # 45 tokens, a vocabulary of 30
    for dropout, training, expected in [(0.5, True, False), (0.5, False, True), (0.0, True, True)]:
        model = _model(bidirectional=True, dropout=dropout).train(training)
        model(ids, lengths)
        assert calls.pop() is expected is model.projects_vocabulary(ids)
    _model(bidirectional=True)(*_batch([3, 2], width=3))  # 6 tokens: projecting them is cheaper
    assert calls.pop() is False


def test_a_reversal_index_is_its_own_inverse_so_its_gradient_is_the_same_gather():
    from pipeline.model.recurrence import Reversal, reversal_index

    lengths, steps = torch.tensor([5, 1, 3, 5]), 6
    rows = reversal_index(lengths, steps)
    assert torch.equal(rows[rows], torch.arange(steps * 4))
    x = torch.randn(steps, 4, 3, dtype=torch.float64, requires_grad=True)
    reversed_x = Reversal.apply(x, rows)
    assert torch.equal(reversed_x[:3, 2], x[:3, 2].flip(0))  # a text's real steps, reversed ...
    assert torch.equal(reversed_x[3:, 2], x[3:, 2])  # ... its padding left in place
    assert torch.autograd.gradcheck(lambda t: Reversal.apply(t, rows), (x,))
