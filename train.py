"""Train a GPT-2 text classifier: `python train.py --help` lists the config groups and options."""

import hydra
from omegaconf import DictConfig

from gpt_classifier.cli.train import train_task


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_task(cfg)


if __name__ == "__main__":
    main()
