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

import httpx

from app.core.catalogue import ARCHITECTURES, DATASETS, FINISHED, JobStatus, TrainingParameters
from app.core.cli_args import add_model_arguments, given_values


class AdminError(Exception):
    pass


class Admin:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AdminError(f"{method} {self.http.base_url}{path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise AdminError(f"{method} {path}: HTTP {response.status_code}: {message}")
        return response

    def captures(self, args: argparse.Namespace) -> Any:
        names = ("model", "version", "label", "min_confidence", "max_confidence", "limit", "before")
        params = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
        if args.labelled is not None:
            params["labelled"] = str(args.labelled).lower()
        return self.call("GET", "/captures", params=params)

    def save(self, path: str, params: dict[str, Any] | None, output: str) -> dict[str, Any]:
        """GET a file (a capture's PNG, an export's tar) into `output`."""
        data = self.send("GET", path, params=params).content
        with open(output, "wb") as handle:
            handle.write(data)
        return {"saved": output, "bytes": len(data)}

    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        body: dict[str, Any] = {"model": args.model}
        if args.architecture is None or args.dataset is None:  # retrain as the served version was trained
            served = self.call("GET", f"/models/{args.model}")
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
        job: dict[str, Any] = self.call("POST", "/train", json=body, headers=headers)
        return job

    def wait(self, job_id: int, poll: float) -> dict[str, Any]:
        bar = ProgressLine(sys.stderr)
        while True:
            job: dict[str, Any] = self.call("GET", f"/train/{job_id}")
            bar.show(job)
            if job["status"] in FINISHED:
                bar.close()
                return job
            time.sleep(poll)


def auto_rule(args: argparse.Namespace) -> dict[str, Any]:
    """`{"auto": {...}}` from --auto-min-requests / --auto-min-agreement, or nothing."""
    if args.auto_min_requests is None:
        return {}
    rule: dict[str, Any] = {"min_requests": args.auto_min_requests}
    if args.auto_min_agreement is not None:
        rule["min_agreement"] = args.auto_min_agreement
    return {"auto": rule}


def rollout(admin: Admin, args: argparse.Namespace) -> Any:
    """GET the model's rollout, or PUT a new policy when any part of one is given."""
    policy = {
        key: value
        for key, value in (
            ("candidate", args.candidate),
            ("weight", args.weight),
            ("shadow", args.shadow),
            ("shadow_rate", args.shadow_rate),
        )
        if value is not None
    }
    policy.update(auto_rule(args))
    if not policy:
        return admin.call("GET", f"/models/{args.model}/rollout")
    return admin.call("PUT", f"/models/{args.model}/rollout", json=policy)


def add_auto_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--auto-min-requests", type=int, help="decide on its own after N shadowed/candidate requests")
    command.add_argument("--auto-min-agreement", type=float, help="promote only at or above this agreement (0-1)")


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
    policy = commands.add_parser("rollout", help="show a model's rollout, or set one with any option below")
    policy.add_argument("model")
    policy.add_argument("--candidate", help="canary: the version answering --weight of the requests")
    policy.add_argument("--weight", type=float)
    policy.add_argument("--shadow", help="a version run on the same inputs after each answer")
    policy.add_argument("--shadow-rate", type=float)
    add_auto_arguments(policy)
    commands.add_parser("promote", help="make a rollout's candidate (else shadow) current").add_argument("model")
    commands.add_parser("abort", help="end a rollout; the served version alone again").add_argument("model")
    add_capture_commands(commands)
    return root


def add_capture_commands(commands: Any) -> None:
    """The /captures routes: list, show, image, label, delete, export."""
    listing = commands.add_parser("captures", help="list captures, newest first")
    for flag in ("--model", "--version", "--label"):
        listing.add_argument(flag)
    listing.add_argument("--min-confidence", type=float)
    listing.add_argument("--max-confidence", type=float)
    labelled = listing.add_mutually_exclusive_group()
    labelled.add_argument("--labelled", dest="labelled", action="store_const", const=True)
    labelled.add_argument("--unlabelled", dest="labelled", action="store_const", const=False)
    listing.add_argument("--limit", type=int)
    listing.add_argument("--before", type=int, help="ids below this: the next page")
    for name, text in (("capture", "a capture's metadata"), ("capture-delete", "delete a capture and its files")):
        commands.add_parser(name, help=text).add_argument("capture_id", type=int)
    image = commands.add_parser("capture-image", help="save a capture's 28x28 PNG")
    image.add_argument("capture_id", type=int)
    image.add_argument("-o", "--output", required=True)
    label = commands.add_parser("label", help="set or correct a capture's label")
    label.add_argument("capture_id", type=int)
    label.add_argument("label")
    export = commands.add_parser("capture-export", help="save a model's labelled captures as IDX files in a tar")
    export.add_argument("model")
    export.add_argument("-o", "--output", required=True)


def run_capture_command(admin: Admin, args: argparse.Namespace) -> Any:
    if args.command == "captures":
        return admin.captures(args)
    if args.command == "capture":
        return admin.call("GET", f"/captures/{args.capture_id}")
    if args.command == "capture-delete":
        admin.call("DELETE", f"/captures/{args.capture_id}")
        return {"deleted": args.capture_id}
    if args.command == "capture-image":
        return admin.save(f"/captures/{args.capture_id}/image", None, args.output)
    if args.command == "label":
        return admin.call("PUT", f"/captures/{args.capture_id}/label", json={"label": args.label})
    return admin.save("/captures/export", {"model": args.model}, args.output)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    admin = Admin(args.url, os.environ.get("PIXELSERVE_ADMIN_TOKEN"))
    result: Any
    if args.command == "train":
        result = admin.train(args)
        print(f"job {result['id']} queued: {args.url.rstrip('/')}/train/{result['id']}", file=sys.stderr)
        if args.wait:
            result = admin.wait(result["id"], args.poll)
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
