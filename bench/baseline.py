"""A classical baseline on the same split as training: bag of words + logistic regression.

    python bench/baseline.py                          # the book's SMS split (data=sms_spam)
    python bench/baseline.py data=csv data.path=reviews.csv
    python bench/baseline.py data=imdb                # the book's IMDb baseline (its README: 88.85 % test)

The same as `gpt-classifier baseline ...` (gpt_classifier.training.baseline).
"""

import sys

from gpt_classifier.cli.train import baseline_main

if __name__ == "__main__":
    sys.exit(baseline_main(sys.argv[1:]))
