"""Two hosts: each records SM_CURRENT_HOST and the gloo all_reduce of 1 + 1 over loopback."""

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

hosts = json.loads(os.environ["SM_HOSTS"])
current = os.environ["SM_CURRENT_HOST"]
dist.init_process_group("gloo", init_method="env://", rank=hosts.index(current), world_size=len(hosts),
                        timeout=timedelta(seconds=120))
value = torch.ones(1)
dist.all_reduce(value)
dist.destroy_process_group()
(Path(os.environ["SM_MODEL_DIR"]) / f"{current}.json").write_text(
    json.dumps({"host": current, "hosts": hosts, "sum": value.item(), "master": os.environ["MASTER_ADDR"]}))
