"""GPTModel: shapes, the causal mask, and `classify` agreeing with slicing the full forward pass."""

import pytest
import torch

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import Reading
from gpt_classifier.model.gpt import GPTConfig, GPTModel

VOCAB, CONTEXT, N_LAYERS = 97, 24, 3
LENGTHS = [12, 7, 1, 4]
PAD = 96
TOL = 1e-5


def tiny_model(out_dim=None, causal=True, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=VOCAB,
        context_length=CONTEXT,
        emb_dim=32,
        n_heads=4,
        n_layers=N_LAYERS,
        causal=causal,
        out_dim=out_dim,
    )
    model = GPTModel(cfg)
    with torch.no_grad():  # LayerNorms start as the identity; make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model.eval()


def padded_batch(seed=1):
    """A right-padded batch, `[4, 12]`, and the real lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(LENGTHS)
    ids = torch.randint(0, PAD, (len(LENGTHS), max(LENGTHS)), generator=generator)
    ids[torch.arange(ids.shape[1]) >= lengths[:, None]] = PAD
    return ids, lengths


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_shapes():
    ids, lengths = padded_batch()
    lm = tiny_model()
    assert lm.embed(ids).shape == (4, 12, 32)
    assert lm(ids).shape == (4, 12, VOCAB)
    clf = tiny_model(out_dim=2)
    assert clf(ids).shape == (4, 12, 2)
    last, mean = Reading(position="last"), Reading(pooling="mean")
    read_pos, prefix = last.read_positions(lengths, 12), last.needed_lengths(lengths, 12)
    assert clf.classify(clf.embed(ids), read_pos=read_pos, prefix=prefix).shape == (4, 2)
    prefix = mean.needed_lengths(lengths, 12)
    assert clf.classify(clf.embed(ids), mean_over=lengths, prefix=prefix).shape == (4, 2)


def test_gpt2_small_parameter_count():
    with torch.device("meta"):
        model = GPTModel(GPTConfig())
    total = sum(p.numel() for p in model.parameters())
    assert total == 163_037_184
    assert total - model.out_head.weight.numel() == 124_439_808  # GPT-2 small, head tied to tok_emb


def test_read_positions():
    lengths = torch.tensor(LENGTHS)
    assert Reading(position="last").read_positions(lengths, 12).tolist() == [11, 11, 11, 11]
    assert Reading(position="first").read_positions(lengths, 12).tolist() == [0, 0, 0, 0]
    assert Reading(position="flexible").read_positions(lengths, 12).tolist() == [11, 6, 0, 3]
    with pytest.raises(GPTClassifierError, match="position='middle' is unknown"):
        Reading(position="middle")


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("start_block", [0, 1, N_LAYERS - 1, N_LAYERS])
@pytest.mark.parametrize("position", ["last", "first", "flexible"])
def test_classify_equals_sliced_forward(position, start_block, causal, read_only):
    model = tiny_model(out_dim=2, causal=causal)
    ids, lengths = padded_batch()
    reading = Reading(position=position, causal=causal)
    pos = reading.read_positions(lengths, ids.shape[1])
    prefix = reading.needed_lengths(lengths, ids.shape[1]) if read_only else None
    with torch.no_grad():
        expected = model(ids)[torch.arange(len(pos)), pos]
        x = model.trf_blocks[:start_block](model.embed(ids))
        got = model.classify(x, start_block=start_block, read_pos=pos, prefix=prefix)
    assert got.shape == (4, 2)
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("start_block", [0, 2, N_LAYERS])
def test_classify_mean_pooling_over_real_tokens(start_block, causal):
    model = tiny_model(out_dim=3, causal=causal)
    ids, lengths = padded_batch()
    with torch.no_grad():
        logits = model(ids)
        expected = torch.stack([logits[b, :n].mean(0) for b, n in enumerate(LENGTHS)])
        x = model.trf_blocks[:start_block](model.embed(ids))
        prefix = Reading(pooling="mean", causal=causal).needed_lengths(lengths, ids.shape[1])
        got = model.classify(x, start_block=start_block, mean_over=lengths, prefix=prefix)
    assert max_diff(got, expected) <= TOL


def test_mean_pooling_needs_lengths():
    model = tiny_model(out_dim=2)
    ids, _ = padded_batch()
    with pytest.raises(ValueError, match="mean_over"):
        model.classify(model.embed(ids))


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("position", "pooling"), [("last", "token"), ("flexible", "token"), (None, "mean")])
def test_classify_gradients_equal_sliced_forward(position, pooling, causal):
    model = tiny_model(out_dim=2, causal=causal)
    ids, lengths = padded_batch()
    weights = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    rows = torch.arange(4)
    reading = Reading(position=position or "last", pooling=pooling, causal=causal)
    pos = reading.read_positions(lengths, ids.shape[1])
    pooled = {"mean_over": lengths} if pooling == "mean" else {"read_pos": pos}
    prefix = reading.needed_lengths(lengths, ids.shape[1])

    out = model.classify(model.embed(ids), prefix=prefix, **pooled)
    got = _grads(model, (out * weights).sum())

    logits = model(ids)
    if pooling == "mean":
        reference = torch.stack([logits[b, :n].mean(0) for b, n in enumerate(LENGTHS)])
    else:
        reference = logits[rows, pos]
    expected = _grads(model, (reference * weights).sum())

    assert got.keys() == expected.keys() == dict(model.named_parameters()).keys()
    last_block = [name for name in got if name.startswith(f"trf_blocks.{N_LAYERS - 1}.")]
    assert len(last_block) == 16
    for name in last_block:
        assert got[name].abs().max() > 0, name
    for name in got:
        assert max_diff(got[name], expected[name]) <= TOL, name


def test_classify_gradients_from_cached_hidden_states():
    """Training on a cached frozen trunk: grads of the trainable top blocks match the full model's."""
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    reading = Reading(position="flexible")
    pos = reading.read_positions(lengths, ids.shape[1])
    prefix = reading.needed_lengths(lengths, ids.shape[1])
    weights = torch.randn(4, 2, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cached = model.trf_blocks[:1](model.embed(ids))
    got = _grads(model, (model.classify(cached, start_block=1, read_pos=pos, prefix=prefix) * weights).sum())
    expected = _grads(model, (model(ids)[torch.arange(4), pos] * weights).sum())
    trainable = ("trf_blocks.1.", "trf_blocks.2.", "final_norm", "out_head")
    top = [name for name in expected if name.startswith(trainable)]
    assert sorted(got) == sorted(top)
    for name in top:
        assert max_diff(got[name], expected[name]) <= TOL, name


def test_causal_mask():
    ids, _ = padded_batch()
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % PAD
    with torch.no_grad():
        causal = tiny_model(causal=True)
        before, after = causal(ids), causal(changed)
        assert max_diff(before[:, :6], after[:, :6]) <= 1e-6  # earlier positions cannot see token 6
        assert (before[:, 6:] - after[:, 6:]).abs().amax(dim=-1).min() > 1e-4  # later ones all do
        bidirectional = tiny_model(causal=False)
        before, after = bidirectional(ids), bidirectional(changed)
        assert (before - after).abs().amax(dim=-1).min() > 1e-4  # every position sees token 6


def test_flexible_reading_ignores_padding():
    model = tiny_model(out_dim=2)
    ids, lengths = padded_batch()
    other_padding = ids.clone()
    other_padding[other_padding == PAD] = 5
    with torch.no_grad():
        for position, same in [("flexible", True), ("last", False)]:
            reading = Reading(position=position)
            pos = reading.read_positions(lengths, ids.shape[1])
            prefix = reading.needed_lengths(lengths, ids.shape[1])
            a = model.classify(model.embed(ids), read_pos=pos, prefix=prefix)
            b = model.classify(model.embed(other_padding), read_pos=pos, prefix=prefix)
            assert (max_diff(a, b) <= 1e-6) == same, position


def test_errors():
    with pytest.raises(ValueError, match="not divisible"):
        GPTModel(GPTConfig(vocab_size=10, context_length=8, emb_dim=30, n_heads=4, n_layers=1))
    model = tiny_model()
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))
    assert model(torch.zeros(1, CONTEXT, dtype=torch.long)).shape == (1, CONTEXT, VOCAB)


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
    flexible = Reading(position="flexible")
    with torch.no_grad():
        model.classify(
            model.embed(ids),
            read_pos=flexible.read_positions(lengths, 12),
            prefix=flexible.needed_lengths(lengths, 12),
        )
    assert rows["trf_blocks.0.att.W_key"] == rows["trf_blocks.0.ff.layers.0"] == sum(LENGTHS)  # not 4 x 12
    assert rows[f"trf_blocks.{N_LAYERS - 1}.att.W_key"] == sum(LENGTHS)
    assert (
        rows[f"trf_blocks.{N_LAYERS - 1}.att.W_query"] == rows[f"trf_blocks.{N_LAYERS - 1}.ff.layers.0"] == 4
    )
    first = Reading(position="first")
    with torch.no_grad():
        model.classify(
            model.embed(ids),
            read_pos=first.read_positions(lengths, 12),
            prefix=first.needed_lengths(lengths, 12),
        )
    assert rows["trf_blocks.0.att.W_key"] == 4
