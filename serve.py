"""Serve a trained classifier over HTTP and as a web page: `python serve.py CKPT [--port 8000]` (--help)."""

import sys

from gpt_classifier.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
