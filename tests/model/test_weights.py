"""Loading Hugging Face GPT-2 checkpoints: logit parity with transformers, both key layouts, clear errors."""

import json
import re
import socket
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.weights import HUB_REPOS, WEIGHTS_FILE, config_from_hf, load_pretrained

CONFIGS = [  # n_layer, n_head, n_embd, n_positions
    (1, 1, 16, 16),
    (2, 2, 32, 64),
    (3, 4, 48, 40),
]


def token_batch(n_positions, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (2, n_positions), generator=generator)


def hf_logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(ids).logits


def our_logits(folder, ids):
    model = load_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(ids)


def rewrite_weights(folder, change):
    """Apply `change` to the tensors of the checkpoint's model.safetensors and save them back."""
    path = folder / WEIGHTS_FILE
    tensors = change(load_file(path))
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(("n_layer", "n_head", "n_embd", "n_positions"), CONFIGS)
def test_logits_match_transformers(n_layer, n_head, n_embd, n_positions, make_hf_checkpoint):
    folder, hf_model = make_hf_checkpoint(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions
    )
    ids = token_batch(n_positions)  # the whole context, so every position embedding is used
    expected = hf_logits(hf_model, ids)
    model = load_pretrained(str(folder))
    shape = {"vocab_size": 50257, "context_length": n_positions, "emb_dim": n_embd}
    shape |= {"n_heads": n_head, "n_layers": n_layer}
    assert {key: value for key, value in model.cfg.to_dict().items() if key in shape} == shape
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        got = model.eval()(ids)
    assert got.shape == expected.shape == (2, n_positions, 50257)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.std() > 0.1  # the logits are not trivially small


def test_output_head_is_tied_to_token_embedding(make_hf_checkpoint):
    folder, hf_model = make_hf_checkpoint()
    model = load_pretrained(str(folder))
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)
    assert torch.equal(model.out_head.weight, hf_model.lm_head.weight)


def test_hub_key_layout(make_hf_checkpoint):
    """The Hub's files have no `transformer.` prefix and carry the causal-mask buffers `h.N.attn.bias`."""
    folder, hf_model = make_hf_checkpoint(n_layer=2, n_head=2, n_embd=32, n_positions=32)
    ids = token_batch(32)
    before = our_logits(folder, ids)

    def hub_layout(tensors):
        hub = {key.removeprefix("transformer."): value for key, value in tensors.items()}
        mask = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
        hub.update({f"h.{i}.attn.bias": mask.clone() for i in range(2)})
        hub.update({f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)})
        return hub

    rewrite_weights(folder, hub_layout)
    keys = load_file(folder / WEIGHTS_FILE).keys()
    assert "wte.weight" in keys and "h.1.attn.bias" in keys
    assert not any(key.startswith("transformer.") for key in keys)
    after = our_logits(folder, ids)
    assert torch.equal(after, before)
    assert (after - hf_logits(hf_model, ids)).abs().max().item() <= 1e-4


def test_explicit_config(make_hf_checkpoint):
    """`load_pretrained(folder, cfg)`: dropout, the causal flag and a shorter context come from `cfg`."""
    folder, hf_model = make_hf_checkpoint(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    hf_cfg = config_from_hf(json.loads((folder / "config.json").read_text()))

    short = load_pretrained(folder, replace(hf_cfg, context_length=16)).eval()
    assert short.pos_emb.weight.shape == (16, 32)
    ids = token_batch(16)
    with torch.no_grad():
        assert (short(ids) - hf_logits(hf_model, ids)).abs().max().item() <= 1e-4

    custom = load_pretrained(folder, replace(hf_cfg, drop_rate=0.25, causal=False))
    assert custom.cfg.drop_rate == 0.25 and custom.drop_emb.p == 0.25
    assert not custom.trf_blocks[1].att.causal
    assert torch.equal(
        custom.trf_blocks[1].ff.layers[0].weight, hf_model.transformer.h[1].mlp.c_fc.weight.t()
    )

    with pytest.raises(GPTClassifierError, match=re.escape("key 'wpe.weight' has shape (64, 32)")):
        load_pretrained(folder, replace(hf_cfg, context_length=128))
    with pytest.raises(GPTClassifierError, match=re.escape("key 'wte.weight' has shape (50257, 32)")):
        load_pretrained(folder, replace(hf_cfg, emb_dim=64))


@pytest.mark.parametrize("key", ["wte.weight", "h.1.attn.c_attn.bias", "ln_f.weight"])
def test_missing_key_is_named(key, make_hf_checkpoint):
    folder, _ = make_hf_checkpoint()
    rewrite_weights(folder, lambda tensors: {k: v for k, v in tensors.items() if k != f"transformer.{key}"})
    with pytest.raises(GPTClassifierError, match=re.escape(f"missing key '{key}'")):
        load_pretrained(str(folder))


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("wpe.weight", (16, 32)),  # the config says 64 positions
        ("h.0.mlp.c_fc.weight", (32, 64)),
        ("h.1.attn.c_attn.weight", (32, 3 * 32 + 3)),
    ],
)
def test_wrong_shape_is_named(key, shape, make_hf_checkpoint):
    folder, _ = make_hf_checkpoint(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    rewrite_weights(folder, lambda tensors: {**tensors, f"transformer.{key}": torch.zeros(shape)})
    with pytest.raises(GPTClassifierError, match=re.escape(f"key '{key}' has shape")):
        load_pretrained(str(folder))


@pytest.mark.parametrize("content", ["pickle", "bytes", "empty"])
def test_non_safetensors_file(content, make_hf_checkpoint):
    folder, hf_model = make_hf_checkpoint()
    weights = folder / WEIGHTS_FILE
    if content == "pickle":
        torch.save(hf_model.state_dict(), weights)
    elif content == "bytes":
        weights.write_bytes(b"this is not a safetensors file " * 64)
    else:
        weights.write_bytes(b"")
    with pytest.raises(GPTClassifierError, match="not a readable safetensors file"):
        load_pretrained(str(folder))


def test_incomplete_folder(make_hf_checkpoint, tmp_path):
    folder, _ = make_hf_checkpoint()
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(GPTClassifierError, match=re.escape(f"{WEIGHTS_FILE} not found")):
        load_pretrained(str(folder))
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(GPTClassifierError, match=re.escape("config.json not found")):
        load_pretrained(str(empty))
    config = json.loads((folder / "config.json").read_text())
    del config["n_embd"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GPTClassifierError, match=re.escape("config.json lacks 'n_embd'")):
        load_pretrained(str(folder))


@pytest.mark.parametrize("name", ["gpt2-tiny", "openai-community/gpt2", "/no/such/folder"])
def test_unknown_name(name):
    with pytest.raises(GPTClassifierError, match="neither a folder nor a known model") as info:
        load_pretrained(name)
    assert all(known in str(info.value) for known in HUB_REPOS)


def test_known_name_offline_without_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads these once, at import
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    attempts = []

    def refuse(*args):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)

    start = time.monotonic()
    with pytest.raises(GPTClassifierError) as info:
        load_pretrained("gpt2-small")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "gpt2-small" in message
    assert "local folder" in message and "random" in message
    assert attempts == []  # offline mode was honoured: not even a DNS lookup
