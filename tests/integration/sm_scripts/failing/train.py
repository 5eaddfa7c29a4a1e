"""Entry point that fails: with --mode file it writes its own failure reason, otherwise it raises."""

import argparse
import os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--mode", default="raise")
args = parser.parse_args()
if args.mode == "file":
    (Path(os.environ["SM_OUTPUT_DIR"]) / "failure").write_text("label column 'Finding' missing in manifest\n")
    raise SystemExit(3)
raise ValueError("no images in channel 'train'")
