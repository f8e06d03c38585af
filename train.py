"""Train a GPT-2 text classifier: `python train.py --help` lists the config groups and options."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not above: `--help` and config errors answer without loading torch and Lightning.
    from gpt_classifier.sweeps import run_task
    from gpt_classifier.train import train

    metrics = run_task(train, cfg)
    return metrics.get("val_acc") if metrics else None  # the value an optimizing sweeper maximizes


if __name__ == "__main__":
    main()
