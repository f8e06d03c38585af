"""A tiny `GPTModel` and a right-padded batch, shared by the book-model and packed-path tests."""

import torch

from gpt_classifier.model.gpt import GPTConfig, GPTModel

VOCAB, CONTEXT, N_LAYERS = 97, 24, 3
LENGTHS = [12, 7, 1, 4]
PAD = 96


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
