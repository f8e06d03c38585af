"""Export: a Hugging Face folder that `transformers` reads alone, ONNX files with the checkpoint's
probabilities for every classifier kind (fp32 and int8), and one-line refusals."""

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from helpers import ROOT, TINY_MODEL, run_many

from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.hf_export import export_hf
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor, predict_texts
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

EXPORT_PY = ROOT / "export.py"
CLASSES = ["not spam", "spam"]
TEXTS = [
    "Hey, are we still on for dinner tonight?",
    'WINNER!! Claim your £1000 prize now: call 09061701461, quote "ABC".',
    "ok",
    "",
    "a literal <|endoftext|> stays text",
    " ".join(["Long message that runs past the maximum length the model was trained with."] * 8),
]
# name: (data settings, classifier settings, finetune settings, model overrides)
KINDS = {
    "last": ({"max_length": 24, "padding": "max_length"}, {"position": "last"}, {"policy": "last_block"}, {}),
    "first": ({"max_length": 24, "padding": "dynamic"}, {"position": "first"}, {"policy": "all"}, {}),
    "flexible": ({"max_length": 24, "padding": "dynamic"}, {"position": "flexible"}, {"policy": "all"}, {}),
    "unpadded": ({"max_length": 24, "padding": "none"}, {"position": "last"}, {"policy": "all"}, {}),
    "mean": ({"max_length": 24, "padding": "dynamic"}, {"pooling": "mean"}, {"policy": "all"}, {}),
    "no_causal": ({"max_length": 24, "padding": "max_length"}, {}, {"policy": "all"}, {"causal": False}),
    "lora": (
        {"max_length": 24, "padding": "dynamic"},
        {"position": "flexible"},
        {"policy": "lora", "lora_rank": 4, "lora_alpha": 8.0},
        {},
    ),
}


def save_checkpoint(path, kind, classes=CLASSES, seed=0, **model_settings):
    """A checkpoint as train.py writes it (the Lightning layout), every weight perturbed so that a
    tensor mapped to the wrong place, LoRA's B included, changes the probabilities."""
    data, classifier, finetune, model = KINDS[kind]
    torch.manual_seed(seed)
    module = GPTClassifier({**TINY_MODEL, **model, **model_settings}, classes, finetune, classifier, data)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_ckpts")
    return {kind: save_checkpoint(folder / f"{kind}.ckpt", kind) for kind in KINDS}


def probabilities(predictions):
    return np.array([list(p.probabilities.values()) for p in predictions])


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_gives_the_checkpoint_probabilities(checkpoints, tmp_path, kind):
    classifier = load_classifier(checkpoints[kind])
    out = tmp_path / f"{kind}.onnx"
    sizes = export_onnx(classifier, out)
    assert out.stat().st_size == sizes["fp32_bytes"]
    expected = predict_texts(TEXTS, classifier, batch_size=4)
    onnx = load_predictor(out)
    assert onnx.class_names == CLASSES
    got = onnx.predict(TEXTS, batch_size=4)
    assert [p.label for p in got] == [p.label for p in expected]
    np.testing.assert_allclose(probabilities(got), probabilities(expected), atol=1e-4)
    single = [onnx.predict([text])[0] for text in TEXTS]  # other batch and sequence sizes
    np.testing.assert_allclose(probabilities(single), probabilities(expected), atol=1e-4)


def test_onnx_file_is_self_describing(checkpoints, tmp_path):
    """Inputs, dynamic axes, output and metadata as documented, read with plain ONNX Runtime."""
    classifier = load_classifier(checkpoints["flexible"])
    out = tmp_path / "model.onnx"
    export_onnx(classifier, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert all(isinstance(dim, str) for i in session.get_inputs() for dim in i.shape)  # dynamic
    assert [o.name for o in session.get_outputs()] == ["logits"]
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["class_names"] == CLASSES
    assert (meta["max_length"], meta["padding"], meta["position"], meta["pooling"]) == (
        24,
        "dynamic",
        "flexible",
        "token",
    )
    ids = torch.tensor([[15496, 11, 995, 50256, 50256], [40, 1101, 257, 3797, 13]])
    mask = (ids != 50256).long()
    (logits,) = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    expected = classifier(ids, mask.sum(-1)).detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_int8_is_smaller_and_agrees_on_a_real_split(checkpoints, sms_split_dir, tmp_path):
    """On the SMS test split: the same label wherever fp32 is not within 0.02 of the boundary, and
    at least 98 % agreement overall."""
    classifier = load_classifier(checkpoints["last"])
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(classifier, fp32)
    sizes = export_onnx(classifier, int8, quantize="int8")
    assert int8.stat().st_size == sizes["int8_bytes"] < fp32.stat().st_size / 2.5
    assert load_predictor(int8).classifier.settings["quantization"] == "int8 dynamic"
    texts = [*TEXTS, *pd.read_csv(sms_split_dir / "test.csv")["Text"].astype(str).head(200)]
    quantized = load_predictor(int8).predict(texts)
    exact = load_predictor(fp32).predict(texts)
    assert probabilities(quantized) == pytest.approx(probabilities(exact), abs=0.05)
    assert len({p.label for p in exact}) == 2  # both classes occur: label agreement means something
    clear = [i for i, p in enumerate(exact) if p.probability > 0.52]
    assert len(clear) > len(texts) / 2
    assert [quantized[i].label for i in clear] == [exact[i].label for i in clear]
    agreement = sum(q.label == e.label for q, e in zip(quantized, exact, strict=True)) / len(texts)
    assert agreement >= 0.98


@pytest.mark.parametrize("kind", ["flexible", "unpadded", "lora"])
def test_hf_folder_gives_the_checkpoint_probabilities_in_transformers(checkpoints, tmp_path, kind):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    classifier = load_classifier(checkpoints[kind])
    folder = tmp_path / "hf"
    export_hf(classifier, folder)
    expected = probabilities(predict_texts(TEXTS, classifier))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.id2label == dict(enumerate(CLASSES))
    # transformers reads a literal <|endoftext|> as the special token, and an empty text as no token
    texts = [t for t in TEXTS if t and "<|endoftext|>" not in t]
    rows = [TEXTS.index(t) for t in texts]
    with torch.no_grad():
        single = [
            model(**tokenizer(t, return_tensors="pt", truncation=True)).logits.softmax(-1)[0] for t in texts
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        batched = model(**batch).logits.softmax(-1)
    np.testing.assert_allclose(torch.stack(single).numpy(), expected[rows], atol=1e-4)
    np.testing.assert_allclose(batched.numpy(), expected[rows], atol=1e-4)
    scores = pipeline("text-classification", model=str(folder))(
        texts, top_k=None, truncation=True, batch_size=4
    )
    for row, result in zip(rows, scores, strict=True):
        by_label = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([by_label[c] for c in CLASSES], expected[row], atol=1e-4)
    assert json.loads((folder / "config.json").read_text())["gpt_classifier"]["class_names"] == CLASSES


def test_hf_tokenizer_tokenizes_like_ours(checkpoints, tmp_path):
    from transformers import AutoTokenizer

    export_hf(load_classifier(checkpoints["flexible"]), tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = [t for t in TEXTS if "<|endoftext|>" not in t] + ["naïve café ☕ über", "  two  spaces\tand tab"]
    ours = get_tokenizer().encode_ordinary_batch(texts)
    assert [tokenizer(t)["input_ids"] for t in texts] == ours


def test_hf_head_bias_moves_exactly_into_final_norm(checkpoints, tmp_path):
    """Three classes: the bias of a [3, emb] head still folds; a big bias makes the fold matter."""
    path = save_checkpoint(tmp_path / "three.ckpt", "flexible", classes=["a", "b", "c"], seed=3)
    classifier = load_classifier(path)
    with torch.no_grad():
        classifier.model.out_head.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))
    export_hf(classifier, tmp_path / "hf")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[15496, 11, 995, 13]])
    with torch.no_grad():
        np.testing.assert_allclose(model(ids).logits, classifier(ids, torch.tensor([4])), atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("last", "classifier.position=last with data.padding=max_length"),
        ("first", "classifier.position=first"),
        ("mean", "classifier.pooling=mean"),
        ("no_causal", "position=last"),
    ],
)
def test_hf_refuses_what_transformers_cannot_reproduce(checkpoints, tmp_path, kind, message):
    with pytest.raises(GPTClassifierError, match=message) as info:
        export_hf(load_classifier(checkpoints[kind]), tmp_path / "hf")
    assert "\n" not in str(info.value) and "classifier.position=flexible" in str(info.value)
    assert not (tmp_path / "hf").exists()  # nothing written


def test_hf_refuses_a_model_without_causal_mask(tmp_path):
    path = save_checkpoint(tmp_path / "nc.ckpt", "flexible", causal=False)
    with pytest.raises(GPTClassifierError, match=r"model\.causal=false"):
        export_hf(load_classifier(path), tmp_path / "hf")


def test_export_cli(checkpoints, tmp_path):
    """The command lines as documented, and their errors in one line (exit status 2)."""
    flexible, book = checkpoints["flexible"], checkpoints["last"]
    jobs = {
        "hf": [str(flexible), "--format", "hf", "--out", str(tmp_path / "hf")],
        "onnx": [str(flexible), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        "int8": [
            str(book),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "q.onnx"),
            "--quantize",
            "int8",
            "--force",
        ],
        "refused": [str(book), "--format", "hf", "--out", str(tmp_path / "refused")],
        "missing": [str(tmp_path / "missing.ckpt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")],
        "bad_suffix": [str(flexible), "--format", "onnx", "--out", str(tmp_path / "model.bin")],
        "no_format": [str(flexible), "--out", str(tmp_path / "y")],
        "quantize_hf": [str(flexible), "--format", "hf", "--out", str(tmp_path / "z"), "--quantize", "int8"],
    }
    results = run_many({name: (EXPORT_PY, args, tmp_path) for name, args in jobs.items()}, timeout=400)
    for name in ("hf", "onnx", "int8"):
        assert results[name].returncode == 0, results[name]
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "merges.txt").is_file()
    assert "int8" in results["int8"].stderr and "MB" in results["int8"].stderr
    got = load_predictor(tmp_path / "m.onnx").predict(TEXTS)
    expected = predict_texts(TEXTS, load_classifier(flexible))
    np.testing.assert_allclose(probabilities(got), probabilities(expected), atol=1e-4)
    messages = {
        "refused": "transformers cannot reproduce",
        "missing": "missing.ckpt not found",
        "bad_suffix": "must end in .onnx",
        "no_format": "--format",
        "quantize_hf": "--quantize applies to --format onnx only",
    }
    for name, message in messages.items():
        result = results[name]
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result
    assert not (tmp_path / "refused").exists() and not (tmp_path / "model.bin").exists()
