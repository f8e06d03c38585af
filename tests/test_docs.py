"""The docs run as written: the own-data example, the ONNX snippet, the config table against `--help`,
and the speed page's roofline script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_MODEL, TRAIN_PY, cli_env

from gpt_classifier.deploy.hf_export import export_hf
from gpt_classifier.deploy.onnx_export import export_onnx
from gpt_classifier.deploy.predictor import load_predictor
from gpt_classifier.model.checkpoint import load_classifier
from gpt_classifier.training.lightning_module import GPTClassifier

DOCS = ROOT / "docs"
BPE_DIR = ROOT / "src" / "gpt_classifier" / "assets" / "gpt2-bpe"
ROOFLINE_PY = ROOT / "bench" / "roofline.py"
PACKAGE = ROOT / "src" / "gpt_classifier"


def marked_block(page: Path, name: str) -> str:
    """The fenced code block right after `<!-- test: NAME ... -->` on a docs page."""
    match = re.search(rf"<!-- test: {re.escape(name)}\b[^\n]*-->\n```\w+\n(.*?)\n```", page.read_text(), re.S)
    assert match, f"{page.name} has no block marked `<!-- test: {name}`"
    return match.group(1)


def run_shell(script: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cli_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # gpt-classifier, python
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_own_data_example_runs_as_written(tmp_path):
    """own-data.md's commands, in a fresh folder holding only the shipped examples/topics.csv. The
    test appends `logger=none` and a silent progress bar to the train command: output only, the
    training is the page's."""
    script = marked_block(DOCS / "own-data.md", "own-data")
    assert "gpt-classifier train" in script
    script = re.sub(
        r"^(gpt-classifier train .*)$",
        r"\1 logger=none callbacks.progress_bar.refresh_rate=0",
        script,
        flags=re.M,
    )
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "topics.csv", tmp_path / "examples")
    result = run_shell(script, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = next((tmp_path / "outputs" / "runs").iterdir())
    assert json.loads((run / "data" / "classes.json").read_text()) == ["cooking", "sports", "weather"]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()[-3:]]
    texts = (tmp_path / "my_texts.txt").read_text().splitlines()
    assert [text for _, _, text in lines] == texts
    assert [label for label, _, _ in lines] == ["weather", "sports", "cooking"]  # what the page shows
    assert all(0.5 < float(probability) <= 1 for _, probability, _ in lines)


def help_groups() -> dict[str, list[str]]:
    """`python train.py --help`'s config groups: {group: [options]}."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_PY), "--help"], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("== Config groups")[1].split("== Config ==")[0]
    groups = dict(re.findall(r"^(\w+): (.+)$", section, re.M))
    return {group: [option.strip() for option in options.split(",")] for group, options in groups.items()}


def test_config_groups_table_lists_every_option_of_help():
    groups = help_groups()
    assert {"data", "model", "experiment", "finetune", "trainer"} <= set(groups)
    assert {"imdb", "csv"} <= set(groups["data"]) and "demo" in groups["experiment"]
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `([\w/]+)` \|.*$", (DOCS / "training.md").read_text(), re.M)
    }
    missing = {
        group: [option for option in options if f"`{option}`" not in rows.get(group, "")]
        for group, options in groups.items()
    }
    assert not {group: options for group, options in missing.items() if options}, (
        "training.md's config-groups table lacks these options of `python train.py --help`"
    )


def tiny_checkpoint(path: Path, data: dict, classifier: dict) -> Path:
    """A checkpoint in train.py's layout, its weights perturbed so that every one matters."""
    torch.manual_seed(0)
    module = GPTClassifier(TINY_MODEL, ["not spam", "spam"], {"policy": "all"}, classifier, data)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


KINDS = {  # the book's reading (padded to max_length, the last position) and the last real token
    "last": ({"max_length": 24, "padding": "max_length"}, {"position": "last"}),
    "flexible": ({"max_length": 24, "padding": "dynamic"}, {"position": "flexible"}),
}


@pytest.mark.parametrize(
    ("tokenizer", "kind"), [("tiktoken", "last"), ("tiktoken", "flexible"), ("hf", "flexible")]
)
def test_onnx_snippet_gives_the_predictor_probabilities(tmp_path, tokenizer, kind):
    """use.md's tokenizer block and its run block, as written, in a folder with `model.onnx`, the shipped
    BPE files as `gpt2-bpe/` and the Hugging Face export as `my-classifier/`. The test appends one line
    that writes the snippet's texts and probabilities to a JSON file."""
    checkpoint = tiny_checkpoint(tmp_path / "model.ckpt", *KINDS[kind])
    classifier = load_classifier(checkpoint)
    export_onnx(classifier, tmp_path / "model.onnx")
    if tokenizer == "hf":
        export_hf(classifier, tmp_path / "my-classifier")
    shutil.copytree(BPE_DIR, tmp_path / "gpt2-bpe")
    page = DOCS / "use.md"
    snippet = "\n".join(
        [
            marked_block(page, f"onnx-{tokenizer}"),
            marked_block(page, "onnx-run"),
            'json.dump({"texts": texts, "probabilities": probabilities.tolist()}, open("out.json", "w"))',
        ]
    )
    (tmp_path / "snippet.py").write_text(snippet)
    result = run_shell(f"{sys.executable} snippet.py", tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    for model in ("model.onnx", "model.ckpt"):
        expected = [
            list(p.probabilities.values()) for p in load_predictor(tmp_path / model).predict(out["texts"])
        ]
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
    assert len(result.stdout.strip().splitlines()) == len(out["texts"])


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def test_roofline_floor_is_the_larger_of_compute_and_memory(sms_split_dir):
    result = subprocess.run(
        [sys.executable, str(ROOFLINE_PY), "--quick", "--data-dir", str(sms_split_dir)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header, rows = markdown_table(result.stdout)
    assert header == [
        "mode",
        "phase",
        "GFLOP",
        "GB moved",
        "compute floor s",
        "memory floor s",
        "roofline floor s",
        "measured s",
        "measured / roofline",
    ]
    phases = ["cache", "training", "validation", "checkpoints", "final_evaluation", "total"]
    assert [(row[0], row[1]) for row in rows] == [(mode, phase) for mode in "abc" for phase in phases]
    for row in rows:
        compute, memory, roof = (float(cell) for cell in row[4:7])
        if row[1] == "total":  # a mode's floor: the sum of its phases' floors
            phase_floors = [float(other[6]) for other in rows if other[0] == row[0] and other[1] != "total"]
            assert roof == pytest.approx(sum(phase_floors), abs=0.03), row
            assert roof >= max(compute, memory) - 0.01, row
        else:
            assert roof == pytest.approx(max(compute, memory), abs=0.011), row
        if row[7] != "-" and roof >= 1:  # measured seconds from bench/results_cpu.json; 2-digit floors
            rounding = 0.05 / roof + 0.005  # measured seconds are printed to 0.1 s, the ratio to 0.01
            assert float(row[8]) == pytest.approx(float(row[7]) / roof, abs=rounding), row
    training = {row[0]: float(row[2]) for row in rows if row[1] == "training"}
    assert training["a"] > training["b"] > training["c"] > 0  # each mode removes work


def test_architecture_page_names_every_module():
    """architecture.md's package layout has one line per module, named by its path relative to
    `src/gpt_classifier/` (`deploy/guard.py`, `errors.py`): a module added, moved or removed fails
    here until the page says so."""
    layout = marked_block(DOCS / "architecture.md", "package-layout")
    named = re.findall(r"^\s*(\S+\.py)(?:\s|$)", layout, re.M)
    modules = sorted(
        path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"
    )
    missing = [m for m in modules if m not in named]
    assert not missing, f"docs/architecture.md's package layout names no line for {missing}"
    unknown = sorted(set(named) - set(modules) - {"__init__.py"})
    assert not unknown, f"docs/architecture.md's package layout names {unknown}: not modules of the package"
    twice = sorted({name for name in named if named.count(name) > 1})
    assert not twice, f"docs/architecture.md's package layout names {twice} more than once"
