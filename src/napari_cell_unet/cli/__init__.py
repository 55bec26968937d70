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
    "batch": "napari_cell_unet.cli.batch",
    "export-bioimageio": "napari_cell_unet.cli.export_bioimageio",
}
EXIT_ERROR = 2  # a documented error (bad file, argument or output): one line on stderr
EXIT_BUG = 3  # anything else: a bug, reported in one line unless --debug


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="cell-unet", description=__doc__)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_debug(parser, False)
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
        _add_debug(p, argparse.SUPPRESS)  # so that `--debug` works before and after the subcommand
    return parser, modules


def _add_debug(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the full traceback of an error")


def main(argv: list[str] | None = None) -> int:
    from ..errors import CellUnetError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    prefix = f"cell-unet {args.command}"
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except (CellUnetError, ValueError) as exc:  # ValueError: as before CellUnetError, e.g. a bad --diameter
        if args.debug:
            raise
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        print(f"{prefix}: unexpected error (please report it; --debug shows the traceback): "
              f"{type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BUG


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
