"""`gpt-classifier <command>`: the installed command does what each script does."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TRAIN_PY, cli_env

COMMAND = Path(sys.executable).parent / "gpt-classifier"  # installed by `pip install -e .`
NO_TORCH = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "


def run(args, cwd=ROOT):
    return subprocess.run(args, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    result = run([str(COMMAND), "--help"])
    assert result.returncode == 0
    for name in ("train", "predict", "serve", "export", "baseline"):
        assert f"\n  {name} " in result.stdout


def test_no_command_and_an_unknown_one_are_one_line_errors():
    assert run([str(COMMAND)]).returncode == 2
    result = run([str(COMMAND), "fit"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gpt-classifier: error: unknown command 'fit': choose one of train, predict, serve, export, baseline"
    ]


@pytest.mark.parametrize("name", ["predict", "serve", "export"])
def test_tool_commands_are_their_scripts(name):
    ours = run([str(COMMAND), name, "--help"])
    script = run([sys.executable, str(ROOT / f"{name}.py"), "--help"])
    assert ours.returncode == script.returncode == 0
    assert ours.stdout.replace(f"gpt-classifier {name}", f"{name}.py").split() == script.stdout.split()


def test_train_composes_like_train_py_from_any_folder(tmp_path):
    overrides = ["model=gpt2-medium", "optimizer.lr=1e-4", "--cfg", "job"]
    ours = run([str(COMMAND), "train", *overrides], cwd=tmp_path)  # no conf/ here: the checkout's
    script = run([sys.executable, str(TRAIN_PY), *overrides])
    assert ours.returncode == script.returncode == 0, ours.stderr
    assert ours.stdout == script.stdout
    assert "name: gpt2-medium" in ours.stdout and "lr: 0.0001" in ours.stdout


def test_train_help_loads_no_torch():
    code = NO_TORCH + "from gpt_classifier.cli.main import main; sys.exit(main(['train', '--help']))"
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0
    assert "== Config groups (group=option) ==" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_import_is_light_and_public_names_load_lazily():
    code = (
        NO_TORCH + "import gpt_classifier; print('torch' in sys.modules); "
        "from gpt_classifier import SpamDataModule, GPTClassifier, TextClassifier, load_classifier, "
        "load_predictor, GPTClassifierError; print(GPTClassifier.__module__, load_predictor.__module__)"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "False",
        "gpt_classifier.training.lightning_module",
        "gpt_classifier.deploy.predictor",
    ]
