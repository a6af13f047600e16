"""`python -m app.admin` / `pixelserve-admin`: the admin's command line. It speaks only HTTP.

export PIXELSERVE_ADMIN_TOKEN=...
pixelserve-admin --url http://127.0.0.1:8000 train fashion --epochs 3 --wait
pixelserve-admin jobs | status 7 | cancel 7 | versions fashion | activate fashion 2
pixelserve-admin rollout fashion [--candidate 2 --weight 0.2 --shadow 3] | promote fashion | abort fashion
pixelserve-admin captures --model mnist --unlabelled | label 12 7 | capture-export mnist -o mnist.tar
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from app.admin_client import Admin, AdminError
from app.admin_commands import (
    add_auto_arguments,
    add_capture_commands,
    add_rollout_commands,
    auto_rule,
    rollout,
    run_capture_command,
)
from app.core.catalogue import ARCHITECTURES, DATASETS, FINISHED, JobStatus, TrainingParameters
from app.core.cli_args import add_model_arguments, given_values


def train(admin: Admin, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model}
    if args.architecture is None or args.dataset is None:  # retrain as the served version was trained
        served = admin.call("GET", f"/models/{args.model}")
        body["architecture"] = args.architecture or served["architecture"]
        body["dataset"] = args.dataset or served["dataset"]
    else:
        body.update(architecture=args.architecture, dataset=args.dataset)
    body.update(given_values(args, TrainingParameters))  # the rest: the server's defaults
    if args.min_accuracy is not None:
        body["min_accuracy"] = args.min_accuracy
    if args.canary is not None or args.shadow:
        how: dict[str, Any] = {"canary": args.canary} if args.canary is not None else {"shadow": True}
        body["rollout"] = {**how, **auto_rule(args)}
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    job: dict[str, Any] = admin.call("POST", "/train", json=body, headers=headers)
    return job


def wait(admin: Admin, job_id: int, poll: float) -> dict[str, Any]:
    bar = ProgressLine(sys.stderr)
    while True:
        job: dict[str, Any] = admin.call("GET", f"/train/{job_id}")
        bar.show(job)
        if job["status"] in FINISHED:
            bar.close()
            return job
        time.sleep(poll)


class ProgressLine:
    """A live progress bar on a terminal; one line per epoch when output is a file or pipe."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.tty, self.last = stream, stream.isatty(), ""

    def show(self, job: dict[str, Any]) -> None:
        progress, metrics = job.get("progress") or {}, job.get("metrics") or []
        done = total = 0
        if progress:
            done = (progress["epoch"] - 1) * progress["steps"] + progress["step"]
            total = progress["epochs"] * progress["steps"]
        filled = int(30 * done / total) if total else 0
        line = f"job {job['id']} {job['status']:<11} [{'#' * filled}{'.' * (30 - filled)}]"
        if progress:
            line += f" epoch {progress['epoch']}/{progress['epochs']} step {progress['step']}/{progress['steps']}"
        if metrics:
            line += f" loss {metrics[-1]['train_loss']:.4f} acc {metrics[-1]['test_accuracy']:.2%}"
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
        elif line.split(" step ")[0] != self.last.split(" step ")[0]:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pixelserve-admin", description=__doc__.splitlines()[0])
    root.add_argument("--url", default=os.environ.get("PIXELSERVE_URL", "http://127.0.0.1:8000"))
    commands = root.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="start a training job")
    train.add_argument("model")
    train.add_argument("--architecture", choices=ARCHITECTURES, help="default: the served version's")
    train.add_argument("--dataset", choices=sorted(DATASETS), help="default: the served version's")
    add_model_arguments(train, TrainingParameters)
    train.add_argument("--min-accuracy", type=float, help="publication floor (0-1)")
    train.add_argument("--idempotency-key")
    publish_as = train.add_mutually_exclusive_group()
    publish_as.add_argument("--canary", type=float, metavar="WEIGHT", help="publish as a canary with this weight")
    publish_as.add_argument("--shadow", action="store_true", help="publish in the served version's shadow")
    add_auto_arguments(train)
    train.add_argument("--wait", action="store_true", help="follow the job; exit 1 unless it succeeds")
    train.add_argument("--poll", type=float, default=1.0)
    commands.add_parser("jobs", help="list jobs, newest first").add_argument("--limit", type=int, default=20)
    for name in ("status", "cancel"):
        commands.add_parser(name, help=f"{name} of a job").add_argument("job_id", type=int)
    commands.add_parser("versions", help="a model's versions").add_argument("model")
    activate = commands.add_parser("activate", help="serve (and pin) a version")
    activate.add_argument("model")
    activate.add_argument("version")
    activate.add_argument("--no-pin", action="store_true", help="let later publications move on")
    add_rollout_commands(commands)
    add_capture_commands(commands)
    return root


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    admin = Admin(args.url, os.environ.get("PIXELSERVE_ADMIN_TOKEN"))
    result: Any
    if args.command == "train":
        result = train(admin, args)
        print(f"job {result['id']} queued: {args.url.rstrip('/')}/train/{result['id']}", file=sys.stderr)
        if args.wait:
            result = wait(admin, result["id"], args.poll)
    elif args.command == "jobs":
        result = admin.call("GET", "/train", params={"limit": args.limit})
    elif args.command == "status":
        result = admin.call("GET", f"/train/{args.job_id}")
    elif args.command == "cancel":
        result = admin.call("POST", f"/train/{args.job_id}/cancel")
    elif args.command == "rollout":
        result = rollout(admin, args)
    elif args.command == "promote":
        result = admin.call("POST", f"/models/{args.model}/rollout/promote")
    elif args.command == "abort":
        result = admin.call("DELETE", f"/models/{args.model}/rollout")
    elif args.command.startswith("capture") or args.command == "label":
        result = run_capture_command(admin, args)
    elif args.command == "versions":
        detail = admin.call("GET", f"/models/{args.model}")
        result = {"served_version": detail["served_version"], "versions": detail["version_details"]}
    else:
        result = admin.call(
            "POST", f"/models/{args.model}/versions/{args.version}/activate", json={"pin": not args.no_pin}
        )
    print(json.dumps(result, indent=2))
    if args.command == "train" and args.wait and result["status"] != JobStatus.SUCCEEDED:
        print(f"job {result['id']} {result['status']}: {result.get('error')}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    try:
        sys.exit(run())
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
