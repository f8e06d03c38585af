"""Export a trained checkpoint to a Hugging Face folder or ONNX: `python export.py --help`."""

import sys

from gpt_classifier.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
