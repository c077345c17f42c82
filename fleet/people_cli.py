"""``edgefleet fleet token|user|role|whoami``: people and tokens over the REST API.

Each command calls a running fleet (``--url``, default ``$EDGEFLEET_URL`` or
http://127.0.0.1:8080) with a bearer token (``--token``, default ``$EDGEFLEET_TOKEN``)
and prints a table, or the API's JSON with ``--json``. A refusal is one line with the
server's own message (`CLIError`). httpx is imported inside the handlers, so
``edgefleet --help`` stays fast.

Grants are written ``ROLE`` or ``ROLE;device_tags=a,b;model_names=m``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from edgefleet.shared.cli import CLIError

DEFAULT_URL = "http://127.0.0.1:8080"
SCOPE_KEYS = ("device_tags", "model_names")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token``, ``user``, ``role`` and ``whoami`` to ``edgefleet fleet``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the fleet API (default $EDGEFLEET_URL or {DEFAULT_URL})")
    common.add_argument("--token", help="an API token (default $EDGEFLEET_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    _token_commands(commands, common)
    _user_commands(commands, common)
    _role_commands(commands, common)
    whoami = commands.add_parser("whoami", parents=[common], help="who your token is")
    whoami.set_defaults(handler=_whoami)


def _token_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    token = commands.add_parser("token", help="create, list and revoke API tokens")
    sub = token.add_subparsers(title="token commands", metavar="COMMAND", required=True)
    create = sub.add_parser(
        "create",
        parents=[common],
        help="make a token (shown once)",
        description="The token is printed once; only its hash is kept.",
    )
    create.add_argument("--label", required=True, help="what it is for (e.g. ci, laptop)")
    create.add_argument("--owner", help="another user's name or id (needs token:manage)")
    create.add_argument(
        "--permission",
        action="append",
        dest="permissions",
        metavar="PERMISSION",
        help="narrow the token to this permission (repeat); default: all the owner's",
    )
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=int, help="default 90, at most 730")
    expiry.add_argument("--never-expires", action="store_true", help="if the fleet allows it")
    create.set_defaults(handler=_token_create)
    listing = sub.add_parser("list", parents=[common], help="your tokens (all with token:manage)")
    listing.add_argument("--owner", help="only this user's tokens")
    listing.set_defaults(handler=_token_list)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a token at once")
    revoke.add_argument("ref", metavar="PREFIX", help="the token's prefix (eft_...) or id")
    revoke.set_defaults(handler=_token_revoke)


def _user_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    user = commands.add_parser("user", help="users and service accounts (needs user:manage)")
    sub = user.add_subparsers(title="user commands", metavar="COMMAND", required=True)
    create = sub.add_parser("create", parents=[common], help="add a user or service account")
    create.add_argument("name")
    create.add_argument("--service", action="store_true", help="a service account (CI, ...)")
    create.add_argument("--grant", action="append", default=[], metavar="GRANT", help=_GRANT_HELP)
    create.set_defaults(handler=_user_create)
    sub.add_parser("list", parents=[common], help="every user").set_defaults(handler=_user_list)
    show = sub.add_parser("show", parents=[common], help="one user")
    show.add_argument("name", help="name or id")
    show.set_defaults(handler=_user_show)
    grant = sub.add_parser("grant", parents=[common], help="replace a user's grants")
    grant.add_argument("name", help="name or id")
    grant.add_argument("--grant", action="append", default=[], metavar="GRANT", help=_GRANT_HELP)
    grant.set_defaults(handler=_user_grant)
    for verb, disabled in (("disable", True), ("enable", False)):
        command = sub.add_parser(
            verb,
            parents=[common],
            help=f"{verb} a user" + (" (its tokens stop working at once)" if disabled else ""),
        )
        command.add_argument("name", help="name or id")
        command.set_defaults(handler=_user_set_disabled, disabled=disabled)


_GRANT_HELP = "ROLE or ROLE;device_tags=a,b;model_names=m (repeat for more; none: no grants)"


def _role_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    role = commands.add_parser("role", help="built-in and custom roles")
    sub = role.add_subparsers(title="role commands", metavar="COMMAND", required=True)
    sub.add_parser("list", parents=[common], help="every role").set_defaults(handler=_role_list)
    for verb in ("create", "update"):
        command = sub.add_parser(verb, parents=[common], help=f"{verb} a custom role")
        command.add_argument("name")
        command.add_argument(
            "--permission", action="append", default=[], dest="permissions", metavar="PERMISSION"
        )
        command.add_argument("--description", default="")
        command.set_defaults(handler=_role_save, verb=verb)
    delete = sub.add_parser("delete", parents=[common], help="delete a custom role nobody holds")
    delete.add_argument("name")
    delete.set_defaults(handler=_role_delete)


# --- handlers ------------------------------------------------------------------------


def _token_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"label": args.label, "never_expires": args.never_expires}
    if args.owner:
        body["owner"] = args.owner
    if args.permissions:
        body["permissions"] = args.permissions
    if args.expires_in_days is not None:
        body["expires_in_days"] = args.expires_in_days
    made = call(args, "POST", "/v1/tokens", body)
    if args.json:
        return _print_json(made)
    print(made["token"])
    expires = made["expires_at"] or "never"
    print(
        f"# token {made['prefix']} of {made['owner']}, expires {expires}:"
        " shown only now, store it safely",
    )
    return 0


def _token_list(args: argparse.Namespace) -> int:
    params = {"owner": args.owner} if args.owner else None
    page = call(args, "GET", "/v1/tokens", params=params)
    if args.json:
        return _print_json(page)
    rows = [
        [
            t["prefix"],
            t["label"],
            t["owner"],
            t["created_at"],
            t["expires_at"] or "never",
            t["last_used_at"] or "-",
            "revoked" if t["revoked"] else "live",
        ]
        for t in page["items"]
    ]
    _print_table(["PREFIX", "LABEL", "OWNER", "CREATED", "EXPIRES", "LAST USED", "STATE"], rows)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    revoked = call(args, "DELETE", f"/v1/tokens/{args.ref}")
    if args.json:
        return _print_json(revoked)
    print(f"revoked {revoked['prefix']} ({revoked['label']}, of {revoked['owner']})")
    return 0


def _user_create(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "kind": "service" if args.service else "user",
        "grants": parse_grants(args.grant),
    }
    return _show_user(args, call(args, "POST", "/v1/users", body))


def _user_list(args: argparse.Namespace) -> int:
    page = call(args, "GET", "/v1/users")
    if args.json:
        return _print_json(page)
    rows = [
        [u["name"], u["kind"], format_grants(u["grants"]), "disabled" if u["disabled"] else "ok"]
        for u in page["items"]
    ]
    _print_table(["NAME", "KIND", "GRANTS", "STATE"], rows)
    return 0


def _user_show(args: argparse.Namespace) -> int:
    return _show_user(args, call(args, "GET", f"/v1/users/{args.name}"))


def _user_grant(args: argparse.Namespace) -> int:
    body = {"grants": parse_grants(args.grant)}
    return _show_user(args, call(args, "PATCH", f"/v1/users/{args.name}", body))


def _user_set_disabled(args: argparse.Namespace) -> int:
    body = {"disabled": args.disabled}
    return _show_user(args, call(args, "PATCH", f"/v1/users/{args.name}", body))


def _show_user(args: argparse.Namespace, user: dict[str, Any]) -> int:
    if args.json:
        return _print_json(user)
    state = "disabled" if user["disabled"] else "ok"
    grants = format_grants(user["grants"])
    print(f"{user['name']} ({user['kind']}, id {user['id']}, {state}): {grants}")
    return 0


def _role_list(args: argparse.Namespace) -> int:
    page = call(args, "GET", "/v1/roles")
    if args.json:
        return _print_json(page)
    rows = [
        [r["name"], "built-in" if r["builtin"] else "custom", ", ".join(r["permissions"])]
        for r in page["items"]
    ]
    _print_table(["NAME", "KIND", "PERMISSIONS"], rows)
    return 0


def _role_save(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"permissions": args.permissions, "description": args.description}
    if args.verb == "create":
        role = call(args, "POST", "/v1/roles", {"name": args.name, **body})
    else:
        role = call(args, "PUT", f"/v1/roles/{args.name}", body)
    if args.json:
        return _print_json(role)
    print(f"{role['name']}: {', '.join(role['permissions']) or '(no permissions)'}")
    return 0


def _role_delete(args: argparse.Namespace) -> int:
    call(args, "DELETE", f"/v1/roles/{args.name}")
    if not args.json:
        print(f"deleted role {args.name}")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    who = call(args, "GET", "/v1/whoami")
    if args.json:
        return _print_json(who)
    token = f" (token {who['token_prefix']})" if who["token_prefix"] else ""
    print(f"{who['kind']} {who['name']}{token}")
    print(f"permissions: {', '.join(who['permissions']) or '(none)'}")
    return 0


# --- the REST call -------------------------------------------------------------------


def call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    params: dict[str, str] | None = None,
) -> Any:
    """The API's JSON answer to one request (None for an empty one).

    Raises `CLIError` without a token, when the fleet cannot be reached, or with the
    server's error message for a 4xx/5xx answer.
    """
    import httpx

    # httpx logs each request at INFO, and `edgefleet` logs to stdout: that would break
    # `--json | jq`. --log-level DEBUG still shows them.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    url = (args.url or os.environ.get("EDGEFLEET_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("EDGEFLEET_TOKEN")
    if not token:
        raise CLIError("no API token: pass --token or set EDGEFLEET_TOKEN")
    try:
        response = httpx.request(
            method,
            url + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as e:
        raise CLIError(f"cannot reach the fleet at {url}: {e}") from None
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {error_message(response.text)}")
    return response.json() if response.content else None


def error_message(text: str) -> str:
    """The message of an API error body (``{"error": {"code", "message"}}``), else the
    start of the text."""
    try:
        error = json.loads(text)["error"]
        return f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300] or "(empty answer)"


def parse_grants(texts: Sequence[str]) -> list[dict[str, Any]]:
    """``ROLE;device_tags=a,b;model_names=m`` strings as grant objects; raises
    `CLIError` naming a part it cannot read."""
    grants: list[dict[str, Any]] = []
    for text in texts:
        role, *scopes = [part.strip() for part in text.split(";")]
        if not role:
            raise CLIError(f"grant {text!r} names no role")
        grant: dict[str, Any] = {"role": role}
        for scope in scopes:
            key, sep, values = scope.partition("=")
            if not sep or key not in SCOPE_KEYS:
                raise CLIError(
                    f"grant {text!r}: cannot read {scope!r}; write device_tags=a,b or model_names=m"
                )
            grant[key] = [v.strip() for v in values.split(",") if v.strip()]
        grants.append(grant)
    return grants


def format_grants(grants: Sequence[dict[str, Any]]) -> str:
    """Grants as `parse_grants` reads them, ``, ``-separated (``-``: none)."""
    out = []
    for grant in grants:
        parts = [str(grant["role"])]
        parts += [f"{k}={','.join(grant[k])}" for k in SCOPE_KEYS if grant.get(k) is not None]
        out.append(";".join(parts))
    return ", ".join(out) or "-"


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2, sort_keys=True))
    return 0


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
