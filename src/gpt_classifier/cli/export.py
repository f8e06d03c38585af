"""`export.py`: a trained checkpoint to a Hugging Face folder or an ONNX file (optionally int8).

python export.py CKPT --format hf --out DIR
python export.py CKPT --format onnx --out model.onnx [--quantize int8]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from gpt_classifier.cli.one_line_errors import OneLineParser, run_main
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import load_classifier


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
        help="onnx only: int8 weights with ONNX Runtime's dynamic quantization (about 4x smaller)",
    )
    args = parser.parse_args(argv)
    if args.quantize and args.format != "onnx":
        parser.error("--quantize applies to --format onnx only")
    classifier = load_classifier(args.checkpoint, merge=True)
    if args.format == "hf":
        from gpt_classifier.deploy.hf_export import export_hf

        written = export_hf(classifier, args.out)
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
    from gpt_classifier.deploy.onnx_export import export_onnx

    try:
        sizes = export_onnx(classifier, args.out, quantize=args.quantize)
    except ImportError as err:
        raise GPTClassifierError(
            f"exporting to ONNX needs {err.name}, which is not installed: pip install -e '.[export]'"
        ) from None
    what = (
        f"int8, {megabytes(sizes['int8_bytes'])} (fp32: {megabytes(sizes['fp32_bytes'])})"
        if args.quantize
        else f"fp32, {megabytes(sizes['fp32_bytes'])}"
    )
    print(f'wrote {Path(args.out)} ({what}): python predict.py {args.out} "some text"', file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(cli, argv)
