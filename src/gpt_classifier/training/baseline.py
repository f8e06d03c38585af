"""A classical baseline on the same split as training: bag of words + logistic regression.

`gpt-classifier baseline [overrides]` (or `python bench/baseline.py`): any `data=...` config and
override works: the data module is instantiated from the Hydra config and prepares its split as
training would (same files, same seed). Prints and writes `metrics.json` with the keys training
writes: accuracy and cross-entropy (log loss) per split. Needs scikit-learn (`pip install -e
".[bench]"`). Tokens are scikit-learn's words, not GPT-2's.
"""

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.final_evaluation import SHORT_NAMES
from gpt_classifier.training.task import METRIC_KEYS


def baseline(cfg: DictConfig) -> dict[str, float]:
    try:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, log_loss
    except ImportError:
        raise GPTClassifierError('the baseline needs scikit-learn: pip install -e ".[bench]"') from None
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    frames = {split: datamodule.read_split(split) for split in SPLITS}
    texts = {s: df[datamodule.text_column].astype(str).tolist() for s, df in frames.items()}
    labels = {s: df[datamodule.label_column].astype(int).to_numpy() for s, df in frames.items()}
    classes = sorted(set().union(*(set(y.tolist()) for y in labels.values())))
    started = time.perf_counter()
    vectorizer = CountVectorizer()
    features = vectorizer.fit_transform(texts["train"])
    model = LogisticRegression(max_iter=1000).fit(features, labels["train"])
    seconds = time.perf_counter() - started
    metrics: dict[str, float] = {}
    for split in SPLITS:
        x = features if split == "train" else vectorizer.transform(texts[split])
        name = SHORT_NAMES[split]
        metrics[f"{name}_acc"] = float(accuracy_score(labels[split], model.predict(x)))
        metrics[f"{name}_loss"] = float(log_loss(labels[split], model.predict_proba(x), labels=classes))
    metrics = {key: metrics[key] for key in METRIC_KEYS}
    metrics["train_seconds"] = round(seconds, 2)
    out_dir = Path(cfg.paths.output_dir)
    write_json_atomic(metrics, out_dir / "metrics.json")
    rows = [f"{'split':<12}{'accuracy':>10}{'loss':>10}"]
    for split in SPLITS:
        name = SHORT_NAMES[split]
        rows.append(f"{split:<12}{100 * metrics[f'{name}_acc']:>9.2f}%{metrics[f'{name}_loss']:>10.4f}")
    vocabulary = f"{len(vectorizer.vocabulary_):,} words"
    rows.append(f"CountVectorizer ({vocabulary}) + LogisticRegression, fitted in {seconds:.1f} s")
    rows.append(f"metrics:       {out_dir / 'metrics.json'}")
    print("\n".join(rows), flush=True)
    return metrics
