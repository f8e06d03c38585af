"""`gpt-classifier <command>`: one installed command for the project's entry points.

Each command is the same as its script: `gpt-classifier train model=gpt2-medium` is `python train.py
model=gpt2-medium`, `gpt-classifier predict CKPT "text"` is `python predict.py CKPT "text"`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

# command -> (module, function taking argv, one-line description); imported only when used.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "gpt_classifier.cli.train",
        "train_main",
        "fine-tune a classifier (Hydra overrides; -m sweeps)",
    ),
    "predict": ("gpt_classifier.cli.predict", "main", "classify texts with a .ckpt or an .onnx"),
    "serve": ("gpt_classifier.cli.serve", "main", "serve a model over HTTP, with a web page"),
    "export": ("gpt_classifier.cli.export", "main", "export a checkpoint to a Hugging Face folder or ONNX"),
    "baseline": ("gpt_classifier.cli.train", "baseline_main", "bag-of-words baseline on the same split"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<10}{about}" for name, (_, _, about) in COMMANDS.items())
    return (
        "usage: gpt-classifier <command> [arguments]\n\n"
        "Fine-tune GPT-2 models for text classification, and use them.\n\n"
        f"commands:\n{rows}\n\n"
        "`gpt-classifier <command> --help` describes each one."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"gpt-classifier: error: unknown command {name!r}: choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module, function, _ = COMMANDS[name]
    try:
        command: Callable[[Sequence[str]], int] = getattr(import_module(module), function)
    except ModuleNotFoundError as err:  # e.g. train without the `train` extra (torch, Lightning, Hydra)
        print(
            f"gpt-classifier: error: {name} needs {err.name}, which is not installed: "
            "pip install 'gpt-classifier[train]'",
            file=sys.stderr,
        )
        return 2
    sys.argv = [f"gpt-classifier {name}", *rest]  # what argparse and Hydra name in usage lines
    return command(rest)


if __name__ == "__main__":
    sys.exit(main())
