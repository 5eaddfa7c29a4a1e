"""Two hosts: the second fails at once, the first would wait far longer than the test (it must be stopped)."""

import json
import os
import time

hosts = json.loads(os.environ["SM_HOSTS"])
if os.environ["SM_CURRENT_HOST"] == hosts[1]:
    raise RuntimeError("worker 2 lost its shard")
time.sleep(300)
