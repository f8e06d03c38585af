"""`export.py`: a trained checkpoint to a Hugging Face folder or an ONNX file (optionally int8).

python export.py CKPT --format hf --out DIR
python export.py CKPT --format onnx --out model.onnx [--quantize int8 [--check-file texts.csv] [--force]]

int8 is measured against fp32 on the run's validation split (or --check-file) and refused below the
bar (--min-agreement, --max-accuracy-drop) unless --force.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from gpt_classifier.cli.one_line_errors import OneLineParser, run_main
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier, read_hyper_parameters


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cli(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(
        description="Export a trained checkpoint for use outside this project: a Hugging Face folder "
        "(transformers' GPT2ForSequenceClassification, AutoTokenizer, pipeline) or an ONNX model "
        "(ONNX Runtime; predict.py reads it too). LoRA factors are merged.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="a .ckpt written by train.py")
    parser.add_argument(
        "--format", choices=("hf", "onnx"), required=True, help="hf: a folder; onnx: one file"
    )
    parser.add_argument("--out", required=True, help="the folder (hf) or the .onnx file to write")
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="onnx only: int8 weights with ONNX Runtime's dynamic quantization (about 4x smaller), "
        "checked against fp32 first",
    )
    add_check_options(parser)
    args = parser.parse_args(argv)
    if args.quantize and args.format != "onnx":
        parser.error("--quantize applies to --format onnx only")
    if not args.quantize and (args.check_file or args.force):
        parser.error("--check-file and --force apply to --quantize int8 only")
    classifier = load_classifier(args.checkpoint, merge=True)
    if args.format == "hf":
        from gpt_classifier.deploy.hf_export import export_hf

        written = export_hf(classifier, args.out, checkpoint=args.checkpoint)
        size = sum(path.stat().st_size for path in written)
        print(
            f"wrote {args.out}/ ({len(written)} files, {megabytes(size)}): load it with "
            f"AutoModelForSequenceClassification.from_pretrained({str(args.out)!r})",
            file=sys.stderr,
        )
        if classifier.long_texts.mode != "truncate":
            print(
                f"note: pipeline() truncates texts; this model reads {classifier.long_texts.mode} "
                f"(data.long_texts): see {Path(args.out) / 'README.md'}",
                file=sys.stderr,
            )
        return
    write_onnx(classifier, args)


def write_onnx(classifier, args) -> None:
    """`--format onnx`: the file (int8 checked first), its card, and what was written."""
    from gpt_classifier.deploy.onnx_export import export_onnx

    gate = quantization_gate(args, classifier.class_names) if args.quantize else None
    try:
        sizes = export_onnx(
            classifier, args.out, quantize=args.quantize, gate=gate, checkpoint=args.checkpoint
        )
    except ImportError as err:
        raise GPTClassifierError(
            f"exporting to ONNX needs {err.name}, which is not installed: pip install -e '.[export]'"
        ) from None
    what = (
        f"int8, {megabytes(sizes['int8_bytes'])} (fp32: {megabytes(sizes['fp32_bytes'])})"
        if args.quantize
        else f"fp32, {megabytes(sizes['fp32_bytes'])}"
    )
    if sizes.get("check") is not None:
        print(f"checked on {gate.check.source}: {sizes['check'].summary()}", file=sys.stderr)
    if sizes["external_data"]:
        what += f", weights in {Path(args.out).name}.data beside it: keep the two together"
    print(f'wrote {Path(args.out)} ({what}): python predict.py {args.out} "some text"', file=sys.stderr)


def add_check_options(parser: OneLineParser) -> None:
    from gpt_classifier.deploy.quantization_check import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT

    parser.add_argument(
        "--check-file",
        metavar="CSV",
        help="texts to check int8 on (a text column, optionally label); default: the run's validation split",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="the share of texts whose int8 label must equal fp32's (default: %(default)s)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_MAX_ACCURACY_DROP,
        help="the accuracy points int8 may lose against fp32 (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="write int8 even below the bar (or unchecked)")


def quantization_gate(args, class_names: list[str]):
    """The bar from the options, on --check-file or the validation split the checkpoint was trained with."""
    from gpt_classifier.deploy.quantization_check import QuantizationGate, read_check_texts

    if args.check_file:
        check = read_check_texts(args.check_file, class_names, source="--check-file")
    else:
        data_dir = (read_hyper_parameters(args.checkpoint).get("data") or {}).get("data_dir")
        split = Path(data_dir) / "validation.csv" if data_dir else None
        if split is not None and split.is_file():
            check = read_check_texts(split, class_names, source="the validation split")
        elif args.force:
            print("int8 NOT checked: no validation split found and no --check-file", file=sys.stderr)
            check = None
        else:
            where = f"{split} is gone" if split else "the checkpoint does not say where its data is"
            raise GPTClassifierError(
                f"--quantize int8 checks itself on the run's validation split, but {where}: pass "
                "--check-file texts.csv (a text column, optionally label), or --force to write it unchecked"
            )
    return QuantizationGate(check, args.min_agreement, args.max_accuracy_drop, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(cli, argv)
