"""The packed path (`model/packed.py`) gives the book's numbers: the full forward pass, sliced at the
read positions (or averaged over the real tokens), for padded and packed inputs and every reading."""

import pytest
import torch
from tiny_gpt import LENGTHS, N_LAYERS, PAD, max_diff, padded_batch, tiny_model

from gpt_classifier.model.classifier import Reading
from gpt_classifier.model.packed import Packing, attend, classify, classify_rows, run_block

TOL = 1e-6  # fp32; the packed path multiplies fewer rows, so the last bits may differ
ROWS = torch.arange(len(LENGTHS))
READINGS = [("last", "token"), ("first", "token"), ("flexible", "token"), ("last", "mean")]


def book_reading(logits, reading, pos):
    """What the book computes: every position's logits, then the read one (or the real tokens' mean)."""
    if reading.pooling == "mean":
        return torch.stack([logits[b, :n].mean(0) for b, n in enumerate(LENGTHS)])
    return logits[ROWS, pos]


def reading_inputs(reading, ids, lengths):
    pos = reading.read_positions(lengths, ids.shape[1])
    pooled = {"mean_over": lengths} if reading.pooling == "mean" else {"read_pos": pos}
    return pos, pooled, reading.needed_lengths(lengths, ids.shape[1])


def test_packing_moves_rows_exactly():
    x = torch.randn(4, 12, 5)
    packing = Packing(torch.tensor(LENGTHS), 12)
    rows = packing.pack(x)
    assert rows.shape == (sum(LENGTHS), 5)
    assert torch.equal(rows, torch.cat([x[b, :n] for b, n in enumerate(LENGTHS)]))
    unpacked = packing.unpack(rows)
    real = torch.arange(12) < torch.tensor(LENGTHS)[:, None]
    assert torch.equal(unpacked[real], x[real]) and not unpacked[~real].any()
    pos = torch.tensor([11, 6, 0, 3])
    assert torch.equal(packing.take(rows, pos), x[ROWS, pos].unsqueeze(1))
    full = Packing(torch.full((4,), 12), 12)
    assert full.full and torch.equal(full.unpack(full.pack(x)), x)


@pytest.mark.parametrize("causal", [True, False])
def test_block_on_packed_rows_equals_the_books_block(causal):
    model = tiny_model(causal=causal)
    ids, lengths = padded_batch()
    block = model.trf_blocks[1]
    prefix = lengths if causal else torch.full_like(lengths, 12)
    packing = Packing(prefix, 12)
    pos = prefix - 1
    with torch.no_grad():
        x = model.embed(ids)
        expected = block(x)
        got = run_block(block, packing.pack(x), packing)
        at_pos = run_block(block, packing.pack(x), packing, read_pos=pos)
        attended = attend(block.att, packing.pack(x), packing, read_pos=pos)
    assert max_diff(packing.unpack(got), packing.unpack(packing.pack(expected))) <= TOL
    assert at_pos.shape == (4, 1, 32)
    assert max_diff(at_pos[:, 0], expected[ROWS, pos]) <= TOL
    assert max_diff(attended[:, 0], block.att(x)[ROWS, pos]) <= TOL


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("start_block", [0, 1, N_LAYERS - 1, N_LAYERS])
@pytest.mark.parametrize(("position", "pooling"), READINGS)
def test_classify_equals_sliced_forward(position, pooling, start_block, causal, read_only):
    model = tiny_model(out_dim=2, causal=causal)
    ids, lengths = padded_batch()
    reading = Reading(position=position, pooling=pooling, causal=causal)
    pos, pooled, prefix = reading_inputs(reading, ids, lengths)
    with torch.no_grad():
        expected = book_reading(model(ids), reading, pos)
        x = model.trf_blocks[:start_block](model.embed(ids))
        got = classify(model, x, start_block=start_block, prefix=prefix if read_only else None, **pooled)
    assert got.shape == (4, 2)
    assert max_diff(got, expected) <= TOL
    if not read_only and pooling == "token":  # the book's computation itself: the same numbers
        assert torch.equal(got, expected)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("start_block", [0, 2, N_LAYERS])
@pytest.mark.parametrize(("position", "pooling"), READINGS)
def test_classify_rows_from_packed_states_equals_sliced_forward(position, pooling, start_block, causal):
    """The cache's layout: each example's needed prefix, one after another, never padded."""
    model = tiny_model(out_dim=2, causal=causal)
    ids, lengths = padded_batch()
    reading = Reading(position=position, pooling=pooling, causal=causal)
    pos, pooled, prefix = reading_inputs(reading, ids, lengths)
    with torch.no_grad():
        expected = book_reading(model(ids), reading, pos)
        hidden = model.trf_blocks[:start_block](model.embed(ids))
        rows = torch.cat([hidden[b, :n] for b, n in enumerate(prefix.tolist())])
        packing = Packing(prefix, int(prefix.max()))
        got = classify_rows(model, rows, packing, start_block=start_block, **pooled)
    assert max_diff(got, expected) <= TOL


def test_classify_needs_exactly_one_reading():
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    with pytest.raises(ValueError, match="mean_over"):
        classify(model, model.embed(ids))
    with pytest.raises(ValueError, match="exactly one"):
        classify(model, model.embed(ids), read_pos=lengths - 1, mean_over=lengths)


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("position", "pooling"), READINGS)
def test_classify_gradients_equal_sliced_forward(position, pooling, causal):
    model = tiny_model(out_dim=2, causal=causal)
    ids, lengths = padded_batch()
    weights = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    reading = Reading(position=position, pooling=pooling, causal=causal)
    pos, pooled, prefix = reading_inputs(reading, ids, lengths)
    got = _grads(model, (classify(model, model.embed(ids), prefix=prefix, **pooled) * weights).sum())
    expected = _grads(model, (book_reading(model(ids), reading, pos) * weights).sum())
    assert got.keys() == expected.keys() == dict(model.named_parameters()).keys()
    last_block = [name for name in got if name.startswith(f"trf_blocks.{N_LAYERS - 1}.")]
    assert len(last_block) == 16
    for name in last_block:
        assert got[name].abs().max() > 0, name
    for name in got:
        assert max_diff(got[name], expected[name]) <= 1e-5, name


def test_classify_gradients_from_cached_hidden_states():
    """Training on a cached frozen trunk: grads of the trainable top blocks match the full model's."""
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    pos, _, prefix = reading_inputs(Reading(position="flexible"), ids, lengths)
    weights = torch.randn(4, 2, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cached = model.trf_blocks[:1](model.embed(ids))
    got = _grads(model, (classify(model, cached, start_block=1, read_pos=pos, prefix=prefix) * weights).sum())
    expected = _grads(model, (model(ids)[ROWS, pos] * weights).sum())
    trainable = ("trf_blocks.1.", "trf_blocks.2.", "final_norm", "out_head")
    top = [name for name in expected if name.startswith(trainable)]
    assert sorted(got) == sorted(top)
    for name in top:
        assert max_diff(got[name], expected[name]) <= 1e-5, name


def test_flexible_reading_ignores_padding():
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    other_padding = ids.clone()
    other_padding[other_padding == PAD] = 5
    with torch.no_grad():
        for position, same in [("flexible", True), ("last", False)]:
            pos, _, prefix = reading_inputs(Reading(position=position), ids, lengths)
            a = classify(model, model.embed(ids), read_pos=pos, prefix=prefix)
            b = classify(model, model.embed(other_padding), read_pos=pos, prefix=prefix)
            assert torch.equal(a, b) == same, position


def test_classify_computes_only_the_read_prefixes():
    """Under the causal mask nothing after the read position is computed (rows seen by each layer)."""
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    rows: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(("W_key", "W_query", "ff.layers.0")):
            module.register_forward_hook(
                lambda m, args, out, name=name: rows.update({name: args[0].shape[:-1].numel()})
            )
    with torch.no_grad():
        pos, _, prefix = reading_inputs(Reading(position="flexible"), ids, lengths)
        classify(model, model.embed(ids), read_pos=pos, prefix=prefix)
    last = f"trf_blocks.{N_LAYERS - 1}"
    assert rows["trf_blocks.0.att.W_key"] == rows["trf_blocks.0.ff.layers.0"] == sum(LENGTHS)  # not 4 x 12
    assert rows[f"{last}.att.W_key"] == sum(LENGTHS)
    assert rows[f"{last}.att.W_query"] == rows[f"{last}.ff.layers.0"] == 4
    with torch.no_grad():
        pos, _, prefix = reading_inputs(Reading(position="first"), ids, lengths)
        classify(model, model.embed(ids), read_pos=pos, prefix=prefix)
    assert rows["trf_blocks.0.att.W_key"] == 4
