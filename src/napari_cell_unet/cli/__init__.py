"""`cell-unet` command line: one subcommand per module in this package, all calling the same core as the GUI."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "segment": "napari_cell_unet.cli.segment",
    "train": "napari_cell_unet.cli.train",
    "evaluate": "napari_cell_unet.cli.evaluate",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="cell-unet", description=__doc__)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        modules[name] = module
        p = sub.add_parser(name, help=module.__doc__.strip().splitlines()[0] if module.__doc__ else None,
                           description=module.__doc__)
        module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("cell-unet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
