"""A stand-in for ``docker compose -f FILE up`` that runs SageMaker local-mode "containers" on the host.

The SageMaker SDK (v2 local mode) writes a compose file with one service per host (``algo-1-xxxxx``
...), each with its ``/opt/ml`` volumes, environment and command (``train`` or ``serve``), and then
runs ``<compose> -f FILE up ...``. In host mode :mod:`dicomflow.emulator.sagemaker_sdk.session` makes that command
``python -m dicomflow.emulator.sagemaker_sdk.compose -f FILE up ...``; this module reads the same file and,
for each service, starts a host process instead of a container:

* ``train``: the user's entry point with the training toolkit's environment
  (:mod:`dicomflow.emulator.sagemaker_sdk.toolkit`). All hosts run together; the first one that fails
  stops the others (``--abort-on-container-exit``) and the exit code is non-zero, with the reason in
  that host's ``/opt/ml/output/failure`` (the SDK then packs ``output.tar.gz`` as usual).
* ``serve``: :mod:`dicomflow.emulator.sagemaker_sdk.serving` on 127.0.0.1 at the host port the compose
  file maps to the container's 8080.

Output of every host is streamed to stdout prefixed with the host name, as compose does. SIGTERM or
SIGINT stops the hosts and exits 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dicomflow.emulator.sagemaker_sdk.toolkit import (
    OPT_ML,
    HostLayout,
    ToolkitError,
    check_requirements,
    env_list_to_dict,
    stage_code,
    training_setup,
    write_failure,
)

_print_lock = threading.Lock()
STOP_GRACE_S = 10.0


def _say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line if line.endswith("\n") else line + "\n")
        sys.stdout.flush()


class _Host:
    """One running host process and the tail of its output."""

    def __init__(self, name: str, layout: HostLayout, proc: subprocess.Popen) -> None:
        self.name, self.layout, self.proc = name, layout, proc
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.stopped_by_us = False
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            _say(f"{self.name}  | {line}")
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.stopped_by_us = True
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _spawn(name: str, layout: HostLayout, argv: list[str], env: dict[str, str], cwd: Path) -> _Host:
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return _Host(name, layout, proc)


def _free_port() -> int:
    from dicomflow.emulator.cloud.service import free_port

    return free_port()


def _layouts(compose: dict, container_root: Path) -> dict[str, HostLayout]:
    return {name: HostLayout.from_compose(container_root, name, list(svc.get("volumes") or []))
            for name, svc in compose["services"].items()}


def _serving_port(svc: dict) -> int:
    for mapping in svc.get("ports") or []:
        host_port, _, container_port = str(mapping).rpartition(":")
        if container_port == "8080" and host_port.isdigit():
            return int(host_port)
    raise ToolkitError("the compose file maps no host port to the serving port 8080")


class Runner:
    """Start the hosts of one compose file, wait, stop them on a signal or a failure."""

    def __init__(self, compose_file: Path) -> None:
        import yaml

        self.compose_file = compose_file
        self.container_root = compose_file.parent
        try:
            self.compose = yaml.safe_load(compose_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ToolkitError(f"cannot read compose file {compose_file}: {exc}") from None
        if not isinstance(self.compose, dict) or not self.compose.get("services"):
            raise ToolkitError(f"compose file {compose_file} has no services")
        self.hosts: list[_Host] = []
        self.stopping = threading.Event()

    def _command(self) -> str:
        commands = {str(svc.get("command", "")) for svc in self.compose["services"].values()}
        if len(commands) != 1 or commands & {""}:
            raise ToolkitError("host mode runs 'train' and 'serve' services only "
                               "(processing jobs and custom entrypoints need a Docker engine)")
        return commands.pop()

    def on_signal(self, signum: int, _frame: object) -> None:
        self.stopping.set()
        for host in self.hosts:
            host.stop()

    def run(self) -> int:
        command = self._command()
        if command == "train":
            return self._train()
        if command == "serve":
            return self._serve()
        raise ToolkitError(f"unknown container command {command!r}; expected train or serve")

    # ---- training ------------------------------------------------------------
    def _train(self) -> int:
        layouts = _layouts(self.compose, self.container_root)
        master_port = _free_port()
        setups = {}
        for name, layout in layouts.items():
            env = env_list_to_dict(self.compose["services"][name].get("environment"))
            try:
                hps_file = layout.to_host(f"{OPT_ML}/input/config/hyperparameters.json")
                raw = json.loads(hps_file.read_text())
                submit = json.loads(raw.get("sagemaker_submit_directory", '""'))
                code_dir = stage_code(layout, submit, env)
                check_requirements(code_dir, log=lambda m, n=name: _say(f"{n}  | {m}"))
                setups[name] = training_setup(layout, env, code_dir, master_port=master_port,
                                              log=lambda m: _say(f"dicomflow  | {m}"))
            except (ToolkitError, OSError, ValueError) as exc:
                reason = f"ClientError: {exc}"
                write_failure(layout, reason)
                _say(f"{name}  | {reason}")
                return 1
        for name, setup in setups.items():
            if self.stopping.is_set():
                break
            self.hosts.append(_spawn(name, layouts[name], setup.argv, setup.env, setup.cwd))
        return self._wait_training()

    def _wait_training(self) -> int:
        exit_code = 0
        pending = list(self.hosts)
        while pending:
            for host in list(pending):
                try:
                    rc = host.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(host)
                host.pump.join(timeout=5)
                if rc != 0 and not host.stopped_by_us and not self.stopping.is_set() and exit_code == 0:
                    exit_code = rc if rc > 0 else 128 - rc
                    failure = host.layout.to_host(f"{OPT_ML}/output/failure")
                    if not failure.exists():
                        tail = "\n".join(host.tail)
                        write_failure(host.layout, f"AlgorithmError: ExitCode {rc}\n{tail}")
                    reason = failure.read_text().strip().splitlines()
                    _say(f"{host.name} exited with code {rc}: {reason[-1] if reason else '-'}")
                    for other in pending:  # --abort-on-container-exit
                        other.stop()
        for host in self.hosts:
            host.kill()
        if self.stopping.is_set():
            return 0
        return exit_code

    # ---- serving -------------------------------------------------------------
    def _serve(self) -> int:
        layouts = _layouts(self.compose, self.container_root)
        name, svc = next(iter(self.compose["services"].items()))
        layout = layouts[name]
        env = env_list_to_dict(svc.get("environment"))
        port = _serving_port(svc)
        model_dir = layout.to_host(f"{OPT_ML}/model")
        submit = env.get("SAGEMAKER_SUBMIT_DIRECTORY", "")
        program = env.get("SAGEMAKER_PROGRAM", "")
        code_dir = stage_code(layout, submit, env) if submit else model_dir / "code"
        if code_dir.is_dir():
            check_requirements(code_dir, log=lambda m: _say(f"{name}  | {m}"))
        child_env = dict(os.environ)
        child_env.update({k: layout.translate(v) for k, v in env.items()})
        child_env.update({
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "SM_MODEL_DIR": str(model_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(code_dir), os.environ.get("PYTHONPATH", "")) if p),
        })
        argv = [sys.executable, "-m", "dicomflow.emulator.sagemaker_sdk.serving", "--host", "127.0.0.1",
                "--port", str(port), "--model-dir", str(model_dir), "--code-dir", str(code_dir)]
        if program:
            argv += ["--program", program]
        cwd = code_dir if code_dir.is_dir() else model_dir
        self.hosts.append(_spawn(name, layout, argv, child_env, cwd))
        host = self.hosts[0]
        rc = host.proc.wait()
        host.pump.join(timeout=5)
        if self.stopping.is_set() or host.stopped_by_us:
            return 0
        return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    """``-f FILE up [compose flags]``; the flags (``--build``, ``--abort-on-container-exit``) are implied."""
    parser = argparse.ArgumentParser(prog="dicomflow.emulator.sagemaker_sdk.compose",
                                     description="Run a SageMaker local-mode compose file as host processes.")
    parser.add_argument("-f", "--file", required=True, type=Path)
    parser.add_argument("action", choices=["up"])
    args, _ignored = parser.parse_known_args(argv)
    try:
        runner = Runner(args.file)
        signal.signal(signal.SIGTERM, runner.on_signal)
        signal.signal(signal.SIGINT, runner.on_signal)
        return runner.run()
    except ToolkitError as exc:
        _say(f"dicomflow  | error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
