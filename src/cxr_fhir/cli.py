"""The ``cxr-fhir`` command line."""

from __future__ import annotations

import argparse
import getpass
import sys

from .settings import Settings


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .app import create_app
    from .logs import configure_logging

    configure_logging(settings.log_level)

    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)
    return 0


def _cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from .storage import migrate
    from .storage.db import make_engine

    engine = make_engine(settings.effective_database_url)
    before, after = migrate.upgrade(engine, settings.migrations_dir)
    print(f"schema at {after}" + (" (unchanged)" if before == after else f" (was {before or 'empty'})"))
    return 0


def _cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from .security.users import UserError, create_user
    from .storage.db import make_engine, session_scope

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            print("error: the passwords differ", file=sys.stderr)
            return 2
    engine = make_engine(settings.effective_database_url)
    try:
        with session_scope(engine) as session:
            user = create_user(session, args.username, password, args.role)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {user.role} {user.username}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-fhir", description="AI chest X-ray assistant that speaks FHIR R4")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending migrations (idempotent)").set_defaults(func=_cmd_db_upgrade)

    users = sub.add_parser("users", help="user accounts").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument("--role", choices=["admin", "doctor"], required=True)
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.set_defaults(func=_cmd_users_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
