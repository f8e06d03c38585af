"""Classify texts with a trained checkpoint: `python predict.py ckpt_path=... text="..."`."""

import hydra
from omegaconf import DictConfig

from gpt_classifier.predict import predict
from gpt_classifier.sweeps import run_task


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


if __name__ == "__main__":
    main()
