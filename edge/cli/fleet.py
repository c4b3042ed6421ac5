"""`edge fleet …`: the operator's fleet registry (add, remove, list, acl), rollout status and remote wipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli.broker_client import broker_parent, collect_retained, connect
from edge.errors import DataError


def _fleet_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--fleet", type=Path, default=Path("fleet.json"), help="fleet file (default ./fleet.json)")
    return p


def cmd_fleet_add(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.operator.fleet import load_fleet, save_fleet

    fleet = load_fleet(args.fleet)
    raw = keys.raw_public(keys.load_public_key(args.key, "device"))
    fleet.add(args.device_id, raw, args.group or [], replace=args.replace)
    save_fleet(args.fleet, fleet)
    groups = ", ".join(fleet.devices[args.device_id]["groups"]) or "no groups"
    print(f"{args.fleet}: device {args.device_id} (key {keys.key_id(keys.load_public_key(args.key, 'device'))}, "
          f"{groups}); regenerate the broker ACL with `edge fleet acl`")
    return 0


def cmd_fleet_remove(args: argparse.Namespace) -> int:
    from edge.operator.fleet import load_fleet, save_fleet

    fleet = load_fleet(args.fleet, missing_ok=False)
    fleet.remove(args.device_id)
    save_fleet(args.fleet, fleet)
    print(f"{args.fleet}: removed {args.device_id}; versions sealed from now on leave it out. To take its current"
          f" watchlist away too: `edge fleet wipe --device {args.device_id}`")
    return 0


def cmd_fleet_list(args: argparse.Namespace) -> int:
    from edge.keys import key_id
    from edge.operator.fleet import load_fleet

    fleet = load_fleet(args.fleet, missing_ok=False)
    rows = [{"device_id": d, "key_id": key_id(v["public_key"]), "groups": v["groups"]}
            for d, v in sorted(fleet.devices.items())]
    if args.json:
        print(json.dumps({"devices": rows, "groups": fleet.groups()}, indent=2))
        return 0
    width = max([len("DEVICE")] + [len(r["device_id"]) for r in rows])
    print(f"{'DEVICE'.ljust(width)}  KEY ID            GROUPS")
    for r in rows:
        print(f"{r['device_id'].ljust(width)}  {r['key_id']}  {', '.join(r['groups']) or '-'}")
    print(f"{len(rows)} device(s); groups: " + (", ".join(f"{g} ({len(m)})" for g, m in fleet.groups().items())
                                              or "none"))
    return 0


def cmd_fleet_acl(args: argparse.Namespace) -> int:
    from edge.durable import atomic_write
    from edge.operator.fleet import acl_text, load_fleet

    text = acl_text(load_fleet(args.fleet, missing_ok=False), args.prefix, tuple(args.consumer or ()))
    if args.out is None:
        print(text, end="")
    else:
        atomic_write(args.out, text.encode(), 0o644)
        print(f"wrote {args.out}; reload mosquitto (systemctl reload mosquitto, or SIGHUP) to apply it")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from edge.messaging.topics import operator_filter
    from edge.operator.fleet import load_fleet
    from edge.operator.rollout import render, rollout

    fleet = load_fleet(args.fleet)
    messages = collect_retained(args, [operator_filter("watchlist_state", args.prefix),
                                       operator_filter("status", args.prefix)])
    report = rollout(messages, fleet.devices, args.prefix)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def cmd_fleet_wipe(args: argparse.Namespace) -> int:
    from edge import keys
    from edge.durable import atomic_write
    from edge.messaging.topics import TopicError, WatchlistTopics
    from edge.watchlist.operator.seal import sign_wipe
    from edge.watchlist.manifest import SchemaError, audience_of

    try:
        audience = audience_of(args.device, args.group)
        source = (WatchlistTopics.for_device(args.device, args.prefix) if args.device
                  else WatchlistTopics.for_group(args.group, args.prefix))
    except (SchemaError, TopicError) as err:
        raise DataError(str(err)) from None
    if not 1 <= args.upto <= 2**63 - 1:
        raise DataError(f"--upto must be a watchlist version ≥ 1, got {args.upto}")
    statement = sign_wipe(keys.load_private_key(args.signing_key, "operator"), audience, args.upto)
    result = {"audience": audience, "upto_version": args.upto, "topic": None, "file": None}
    if args.out:
        atomic_write(args.out, statement, 0o644)
        result["file"] = str(args.out)
        message = f"wrote the signed wipe for {audience} (versions ≤ {args.upto}) to {args.out}"
    else:
        client = connect(args, [])
        try:
            client.publish_confirmed([(source.wipe, statement)], retain=True, connect_timeout=args.connect_timeout)
        finally:
            client.stop()
        result["topic"] = source.wipe
        message = (f"published a signed wipe for {audience} (versions ≤ {args.upto}) on {source.wipe}; see"
                   " `edge fleet status`")
    print(json.dumps(result, indent=2) if args.json else message)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `edge fleet …`."""
    fleet_parser = sub.add_parser("fleet", help="the fleet registry, rollout status and remote wipe (operator side)")
    fl = fleet_parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    fleet, broker = _fleet_parent(), broker_parent()
    p = fl.add_parser("add", parents=[fleet], help="register a device with its public key and groups")
    p.add_argument("device_id", metavar="ID")
    p.add_argument("--key", type=Path, required=True, help="the device's public key (X25519, from `edge provision`)")
    p.add_argument("--group", action="append", metavar="G", help="a group it belongs to (repeatable)")
    p.add_argument("--replace", action="store_true", help="change a device already in the fleet")
    p.set_defaults(func=cmd_fleet_add)
    p = fl.add_parser("remove", parents=[fleet], help="unregister a device (left out of every later version)")
    p.add_argument("device_id", metavar="ID")
    p.set_defaults(func=cmd_fleet_remove)
    p = fl.add_parser("list", parents=[fleet], help="devices, key ids and groups")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet_list)
    p = fl.add_parser("acl", parents=[fleet], help="write the broker ACL for this fleet (groups → read grants)")
    p.add_argument("--out", type=Path, help="ACL file to write (default: print it)")
    p.add_argument("--prefix", default="edge", help="topic prefix (default 'edge')")
    p.add_argument("--consumer", action="append", metavar="CN", help="another event-consumer certificate CN besides "
                   "'operator' (repeatable): one per `edge events consume` process")
    p.set_defaults(func=cmd_fleet_acl)
    p = fl.add_parser("status", parents=[fleet, broker],
                      help="rollout: installed version per device, devices per version",
                      description="Read the devices' retained watchlist/state and status topics and report, per device,"
                                  " the installed version, last seen and any rejection; per version, how many run it.")
    p.add_argument("--wait", type=float, default=3.0, help="seconds to wait for retained messages (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet_status, default_client_id="operator-publish")
    p = fl.add_parser("wipe", parents=[broker], help="make a device or group drop its watchlist (signed, retained)",
                      description="Sign a wipe statement with the operator key and publish it retained: the devices"
                                  " drop the watchlist (versions ≤ --upto) from memory and disk and report 'wiped'.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--device", help="the device to wipe")
    g.add_argument("--group", help="the group whose members drop the watchlist they got from it")
    p.add_argument("--upto", type=int, required=True, help="wipe versions up to this one (later ones install again)")
    p.add_argument("--signing-key", type=Path, required=True, help="operator private key (Ed25519)")
    p.add_argument("--out", type=Path, help="write the signed statement here instead of publishing it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet_wipe, default_client_id="operator-publish")
