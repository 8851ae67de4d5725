"""The ``cxr-fhir`` command line: one module per group of commands, each adding its own."""

from __future__ import annotations

import argparse
import sys

from ..settings import Settings
from . import accounts, dicom, ml, models, service


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-fhir", description="AI chest X-ray assistant that speaks FHIR R4")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (service, accounts, ml, models, dicom):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args, Settings())
    return code


if __name__ == "__main__":
    sys.exit(main())
