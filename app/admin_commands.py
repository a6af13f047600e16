"""The admin script's rollout and capture commands (app/admin.py gathers every command)."""

from __future__ import annotations

import argparse
from typing import Any

from app.admin_client import Admin


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


def add_rollout_commands(commands: Any) -> None:
    """The /models/{name}/rollout routes: show or set, promote, abort."""
    policy = commands.add_parser("rollout", help="show a model's rollout, or set one with any option below")
    policy.add_argument("model")
    policy.add_argument("--candidate", help="canary: the version answering --weight of the requests")
    policy.add_argument("--weight", type=float)
    policy.add_argument("--shadow", help="a version run on the same inputs after each answer")
    policy.add_argument("--shadow-rate", type=float)
    add_auto_arguments(policy)
    commands.add_parser("promote", help="make a rollout's candidate (else shadow) current").add_argument("model")
    commands.add_parser("abort", help="end a rollout; the served version alone again").add_argument("model")


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
        return list_captures(admin, args)
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


def list_captures(admin: Admin, args: argparse.Namespace) -> Any:
    names = ("model", "version", "label", "min_confidence", "max_confidence", "limit", "before")
    params = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.labelled is not None:
        params["labelled"] = str(args.labelled).lower()
    return admin.call("GET", "/captures", params=params)
