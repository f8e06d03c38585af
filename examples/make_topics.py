"""Generate `topics.csv`: a small 3-class example dataset (weather, sports, cooking) made by this project.

Each message is drawn from per-topic templates and word lists with a fixed seed, so the file is
reproducible: `python examples/make_topics.py` rewrites the same 600 rows.
"""

import csv
import random
from pathlib import Path

TOPICS = {
    "weather": (
        [
            "Expect {w} this {t} with {n} degrees.",
            "Is it going to be {w} on {d}?",
            "The forecast says {w} until {d}.",
            "Bring an umbrella, {w} is coming {t}.",
            "{n} mm of rain and {w} expected {t}.",
        ],
        {
            "w": [
                "heavy rain",
                "snow",
                "sunshine",
                "strong wind",
                "fog",
                "thunderstorms",
                "hail",
                "clear skies",
            ]
        },
    ),
    "sports": (
        [
            "The {s} team won {n} to {m} on {d}.",
            "Who scored in the {s} final {t}?",
            "Great {s} match {t}, what a goal!",
            "Tickets for the {s} game on {d} are sold out.",
            "Our {s} coach wants practice at {n} pm.",
        ],
        {"s": ["football", "basketball", "hockey", "tennis", "rugby", "volleyball", "cricket", "baseball"]},
    ),
    "cooking": (
        [
            "Bake the {f} for {n} minutes at 180 degrees.",
            "Add {n} spoons of {f} and stir {t}.",
            "My {f} recipe needs fresh herbs.",
            "Dinner on {d}: roasted {f} with garlic.",
            "Chop the {f} and simmer it {t}.",
        ],
        {"f": ["bread", "chicken", "pasta", "onions", "tomato sauce", "pumpkin soup", "salmon", "apple pie"]},
    ),
}
SHARED = {
    "t": ["tonight", "this morning", "later", "tomorrow", "today"],
    "d": ["Monday", "Friday", "Saturday", "Sunday", "the weekend"],
    "n": [str(n) for n in range(2, 40)],
    "m": [str(n) for n in range(0, 5)],
}


def make(rows_per_topic: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for topic, (templates, words) in TOPICS.items():
        slots = {**SHARED, **words}
        for _ in range(rows_per_topic):
            template = rng.choice(templates)
            rows.append((template.format(**{k: rng.choice(v) for k, v in slots.items()}), topic))
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("topics.csv")
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(make())
    print(f"wrote {out}")
