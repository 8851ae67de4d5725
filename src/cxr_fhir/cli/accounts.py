"""Commands for accounts: users of the pages and FHIR API clients (each change audited)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from ..settings import Settings


def _cli_actor() -> str:
    """Who runs the command, for the audit trail: ``cli:<operating-system user>``."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name: a container user without a passwd entry
        name = "unknown"
    return f"cli:{name or 'unknown'}"


def _cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from ..security.users import UserError, create_user
    from ..storage.db import make_engine, writing

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            print("error: the passwords differ", file=sys.stderr)
            return 2
    engine = make_engine(settings.effective_database_url)
    try:
        with writing(engine) as session:
            user = create_user(session, args.username, password, args.role, actor=_cli_actor())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {user.role} {user.username}")
    return 0




def _cmd_clients(args: argparse.Namespace, settings: Settings) -> int:
    from sqlmodel import select

    from ..records.tables import ApiClient
    from ..security.clients import ClientError, create_client, revoke_client
    from ..storage.db import make_engine, writing

    engine = make_engine(settings.effective_database_url)
    try:
        with writing(engine) as session:
            if args.clients_command == "create":
                client, token = create_client(session, args.name, args.scope, actor=_cli_actor())
                print(f"created client {client.name} with scopes {' '.join(client.scopes)}")
                print(f"token (shown once, keep it secret): {token}")
            elif args.clients_command == "revoke":
                client = revoke_client(session, args.name, actor=_cli_actor())
                print(f"revoked client {client.name}")
            else:
                for c in session.exec(select(ApiClient).order_by(ApiClient.name)).all():
                    state = f"revoked {c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "active"
                    print(f"{c.name}\t{state}\t{' '.join(c.scopes)}")
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0




def register(sub: Any) -> None:
    """Add this module's commands to the ``cxr-fhir`` parser."""
    users = sub.add_parser("users", help="user accounts").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--role", choices=["admin", "doctor"], required=True)
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.set_defaults(func=_cmd_users_create)

    clients = sub.add_parser("clients", help="FHIR API clients and their bearer tokens")
    clients_sub = clients.add_subparsers(dest="clients_command", required=True)
    c_create = clients_sub.add_parser("create", help="create a client; prints its token once")
    c_create.add_argument("name")
    c_create.add_argument("--scope", action="append", required=True,
                          help="system/<Resource|*>.<read|write|*>; repeat for several")
    c_revoke = clients_sub.add_parser("revoke", help="revoke a client's token")
    c_revoke.add_argument("name")
    clients_sub.add_parser("list", help="list clients and their scopes")
    clients.set_defaults(func=_cmd_clients)
