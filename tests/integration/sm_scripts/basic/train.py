"""Tiny script-mode entry point: training writes files, serving echoes them (SageMaker docs layout)."""

import argparse
import json
import os
from pathlib import Path

ENV_KEYS = ["SM_HOSTS", "SM_CURRENT_HOST", "SM_CHANNELS", "SM_CHANNEL_TRAIN", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR",
            "SM_OUTPUT_DIR", "SM_INPUT_DIR", "SM_INPUT_CONFIG_DIR", "SM_HPS", "SM_HP_EPOCHS", "SM_HP_GREETING",
            "SM_NUM_CPUS", "SM_NUM_GPUS", "SM_USER_ENTRY_POINT", "SM_MODULE_DIR", "SM_CHECKPOINT_DIR",
            "SM_TRAINING_ENV", "TRAINING_JOB_NAME", "AWS_REGION"]


def model_fn(model_dir):
    return json.loads((Path(model_dir) / "model.json").read_text())


def predict_fn(data, model):
    return {"greeting": model["greeting"], "echo": data, "cwd_is_code": Path("train.py").is_file()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--greeting", default="none")
    args = parser.parse_args()
    model_dir = Path(os.environ["SM_MODEL_DIR"])
    data = (Path(os.environ["SM_CHANNEL_TRAIN"]) / "data.txt").read_text()
    (model_dir / "model.json").write_text(json.dumps({"greeting": args.greeting, "epochs": args.epochs,
                                                      "data": data}))
    (model_dir / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in ENV_KEYS}))
    (model_dir / "cwd.txt").write_text(os.getcwd())
    (Path(os.environ["SM_OUTPUT_DATA_DIR"]) / "metrics.json").write_text(json.dumps({"loss": 0.5}))
    print(f"trained {args.epochs} epoch(s)")


if __name__ == "__main__":
    main()
