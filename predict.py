"""Classify texts with a trained checkpoint or an exported ONNX model: `python predict.py --help`."""

import sys

from gpt_classifier.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
