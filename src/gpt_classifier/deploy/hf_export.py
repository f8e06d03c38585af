"""A trained classifier as a Hugging Face folder that `transformers` loads with no code of ours.

`GPT2ForSequenceClassification` reads the logits of the last token that is not `pad_token_id`:
that is our `classifier.position=flexible` (and `last` without padding, which `Reading.for_padding`
turns into `flexible`). Whatever it cannot reproduce (another position, mean pooling, no causal
mask, another pad token) is refused in one line. Its `score` head has no bias while our `out_head`
has one: since `final_norm` feeds only the head, the bias moves exactly into `final_norm`'s bias
(`W @ delta = b`, solvable when the head's rows are independent; checked). The calibration
temperature T is folded into `score` (logits are linear in the head: `(W / T) h`, and `delta` is the
same for `W / T` and `b / T`), so `pipeline()` gives the calibrated probabilities.

Only safetensors and JSON are needed to write the folder; `transformers` reads it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor

from gpt_classifier.atomic_files import replace_atomically, write_json_atomic
from gpt_classifier.data.tokenizer import ENDOFTEXT, PAD_TOKEN_ID
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import TextClassifier
from gpt_classifier.model.finetune import LoRALinear
from gpt_classifier.model.weights import WEIGHTS_FILE, _hf_key

FLEXIBLE = "train with classifier.position=flexible (the book's best pretrained row), or export to ONNX"
FOLD_TOLERANCE = 1e-5  # relative residual of moving the head's bias into final_norm


def hf_problem(classifier: TextClassifier) -> str | None:
    """Why `transformers`' GPT-2 classifier would compute something else than `classifier`, or None."""
    reading = classifier.reading
    if reading.pooling == "mean":
        return (
            f"it averages over the tokens (classifier.pooling=mean), transformers reads one token: {FLEXIBLE}"
        )
    if reading.position == "first":
        return f"it reads the first token (classifier.position=first), transformers the last one: {FLEXIBLE}"
    if reading.position == "last":
        return (
            f"it reads the last position after padding (classifier.position=last with "
            f"data.padding={classifier.padding}), transformers the last real token: {FLEXIBLE}"
        )
    if not reading.causal:
        return (
            "it was trained without the causal mask (model.causal=false), transformers' GPT-2 always has it"
        )
    if classifier.pad_token_id != PAD_TOKEN_ID:
        return f"its pad token is {classifier.pad_token_id}, not <|endoftext|> ({PAD_TOKEN_ID})"
    if any(isinstance(m, LoRALinear) for m in classifier.model.modules()):
        return "its LoRA factors are not merged: load it with load_classifier(path, merge=True)"
    return None


def folded_final_norm_bias(classifier: TextClassifier) -> Tensor:
    """`final_norm.bias + delta` with `out_head.weight @ delta = out_head.bias`: the head's bias, moved."""
    head, norm = classifier.model.out_head, classifier.model.final_norm
    if head.bias is None:
        return norm.bias.detach().clone()
    weight, bias = head.weight.detach().double(), head.bias.detach().double()
    delta = torch.linalg.pinv(weight) @ bias
    folded = (norm.bias.detach().double() + delta).to(norm.bias.dtype)
    moved = weight @ (folded.double() - norm.bias.detach().double())
    residual = float((moved - bias).abs().max()) / max(1.0, float(bias.abs().max()))
    if residual > FOLD_TOLERANCE:
        raise GPTClassifierError(
            f"the head's bias cannot be moved into final_norm exactly (residual {residual:.1e}): the "
            "rows of out_head.weight are linearly dependent; export to ONNX instead"
        )
    return folded


def hf_state_dict(classifier: TextClassifier) -> dict[str, Tensor]:
    """`GPT2ForSequenceClassification`'s tensors: `transformer.*` (Conv1D weights transposed, the three
    attention projections in one `c_attn`) and `score.weight` (divided by the temperature); the head's
    bias folded into `ln_f`."""
    model = classifier.model
    state: dict[str, Tensor] = {}
    attention: dict[str, list[Tensor | None]] = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("out_head."):
            continue
        hf_key, third, transposed = _hf_key(key)
        tensor = tensor.detach().t() if transposed else tensor.detach()
        if third is None:
            state[f"transformer.{hf_key}"] = tensor
        else:
            attention.setdefault(hf_key, [None, None, None])[third.start] = tensor
    emb_dim = model.cfg.emb_dim
    for block in range(model.cfg.n_layers):
        weight = attention[f"h.{block}.attn.c_attn.weight"]
        bias = attention.get(f"h.{block}.attn.c_attn.bias") or [torch.zeros(emb_dim)] * 3  # qkv_bias=false
        state[f"transformer.h.{block}.attn.c_attn.weight"] = torch.cat(weight, dim=-1)
        state[f"transformer.h.{block}.attn.c_attn.bias"] = torch.cat(bias, dim=-1)
    state["transformer.ln_f.bias"] = folded_final_norm_bias(classifier)
    state["score.weight"] = model.out_head.weight.detach() / classifier.temperature
    return {key: value.float().contiguous() for key, value in state.items()}


def hf_config(classifier: TextClassifier) -> dict:
    cfg = classifier.model.cfg
    names = classifier.class_names
    return {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",  # GELU, tanh approximation: ours
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "bos_token_id": PAD_TOKEN_ID,
        "eos_token_id": PAD_TOKEN_ID,
        "pad_token_id": classifier.pad_token_id,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        # several labels: transformers' pipeline then gives a sigmoid per label, as we do
        "problem_type": (
            "multi_label_classification" if classifier.multi_label else "single_label_classification"
        ),
        "torch_dtype": "float32",
        "gpt_classifier": classifier.settings(),  # the threshold and positive class, for who wants them
    }


def tokenizer_files(classifier: TextClassifier) -> dict[str, dict]:
    """GPT-2's slow-tokenizer config (the fast one is built from vocab.json and merges.txt on load)."""
    special = {"content": ENDOFTEXT, "single_word": False, "lstrip": False, "rstrip": False}
    special = {**special, "normalized": True, "special": True}
    max_length = min(classifier.max_length or classifier.context_length, classifier.context_length)
    return {
        "tokenizer_config.json": {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": max_length,  # what predict.py truncates to: pass truncation=True
            "add_prefix_space": False,
            "padding_side": "right",
            "bos_token": ENDOFTEXT,
            "eos_token": ENDOFTEXT,
            "unk_token": ENDOFTEXT,
            "pad_token": ENDOFTEXT,
            "added_tokens_decoder": {str(PAD_TOKEN_ID): special},
        },
        "special_tokens_map.json": {
            key: ENDOFTEXT for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        },
    }


def long_texts_note(classifier: TextClassifier) -> str:
    """What `pipeline()` does with a text longer than the model read in training, and the way to the
    answer the checkpoint gives."""
    long_texts = classifier.long_texts
    max_length = long_texts.max_length
    if long_texts.mode == "windows":
        trained = (
            f"windows of {max_length} tokens every {long_texts.window_stride} (at most "
            f"{long_texts.max_windows}, the first ones), the {long_texts.aggregate} of their logits"
        )
    elif long_texts.mode == "head_tail":
        head, tail = long_texts.head_tail
        trained = f"its first {head} and last {tail} tokens (data.long_texts=head_tail)"
    else:
        trained = f"its first {max_length} tokens" if long_texts.truncation_side == "right" else "its end"
    return (
        "## Long texts\n\n"
        f'This model was trained reading a text as {trained}. `pipeline("text-classification", '
        "truncation=True)` truncates every text to its first `model_max_length` "
        f"({max_length}) tokens and reads nothing after them (without `truncation=True`, a text "
        "longer than the context fails). "
        + (
            "To get the windowed answer (data.long_texts=windows), classify with the checkpoint or "
            'its ONNX export: `python predict.py model.ckpt "text"` or `python predict.py model.onnx '
            '"text"` split the text into the same windows and aggregate their logits; the settings are '
            "in config.json under `gpt_classifier`.\n"
            if long_texts.mode != "truncate"
            else "`python predict.py` reads texts the same way.\n"
        )
    )


def model_card(classifier: TextClassifier) -> str:
    """README.md: what the folder holds and how texts must be read to get the checkpoint's answers."""
    names = ", ".join(classifier.class_names)
    return (
        "# gpt-classifier model\n\n"
        f"A GPT-2 text classifier ({names}) exported by gpt-classifier: "
        "`AutoModelForSequenceClassification.from_pretrained(folder)` loads it.\n\n"
        + long_texts_note(classifier)
    )


def export_hf(
    classifier: TextClassifier, out: str | Path, *, checkpoint: str | Path | None = None
) -> list[Path]:
    """Write the Hugging Face folder `out` (each file atomically); the files written. With the
    `checkpoint` it came from, also its model card, `README.md` (see `model_card`)."""
    problem = hf_problem(classifier)
    if problem:
        raise GPTClassifierError(f"transformers cannot reproduce this classifier: {problem}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GPTClassifierError(f"--out {out} is a file: pass a folder for --format hf")
    weights = save(hf_state_dict(classifier), metadata={"format": "pt"})
    written = [out / WEIGHTS_FILE, out / "config.json", out / "vocab.json", out / "merges.txt"]
    replace_atomically(written[0], lambda f: f.write(weights))
    write_json_atomic(hf_config(classifier), written[1])
    bpe = files("gpt_classifier") / "assets" / "gpt2-bpe"  # the same files, under transformers' names
    replace_atomically(written[2], lambda f: f.write((bpe / "encoder.json").read_bytes()))
    replace_atomically(written[3], lambda f: f.write((bpe / "vocab.bpe").read_bytes()))
    for name, content in tokenizer_files(classifier).items():
        write_json_atomic(content, out / name)
        written.append(out / name)
    if checkpoint is None:
        card = model_card(classifier)
        replace_atomically(out / "README.md", lambda f: f.write(card.encode()))
        return [*written, out / "README.md"]
    from gpt_classifier.deploy.model_card import card_text, hf_usage, write_card

    usage = hf_usage(str(out)) + "\n\n" + long_texts_note(classifier)
    return [*written, write_card(card_text(classifier, checkpoint, usage=usage), out / "README.md")]
