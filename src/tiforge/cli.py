"""The `tiforge` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources

from .config import ConfigError, dump_config, load_config


def _example_config() -> str:
    return (resources.files("tiforge") / "assets" / "example_config.yaml").read_text(encoding="utf-8")


def _cmd_train(args) -> int:
    config = load_config(args.config, args.set)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from .train import train

    result = train(config, progress=not args.quiet)
    print(f"embedding: {result.embedding_path}")
    print(f"run folder: {result.run_dir}")
    return 0


def _cmd_config(args) -> int:
    if args.example:
        print(_example_config(), end="")
        return 0
    if args.check:
        config = load_config(args.check, args.set)
        print(f"{args.check}: OK")
        if args.verbose:
            print(dump_config(config), end="")
        return 0
    print("use `tiforge config --example` or `tiforge config --check FILE`", file=sys.stderr)
    return 2


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, steps=args.steps, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiforge", description="Textual Inversion training for Stable Diffusion.")
    parser.add_argument("--version", action="version", version=f"tiforge {__import__('tiforge').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an embedding from a YAML config")
    p.add_argument("config", help="YAML config (invoke-training SD_TEXTUAL_INVERSION schema)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted for nested ones (e.g. optimizer.learning_rate=1e-3)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("config", help="print a documented example config, or check one")
    p.add_argument("--example", action="store_true", help="print a documented starting config")
    p.add_argument("--check", metavar="FILE", help="validate a config file without training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-v", "--verbose", action="store_true", help="with --check, print the resolved config")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="train on a tiny built-in model and bundled pictures (offline, ~1 min)")
    p.add_argument("--output-dir", default="tiforge-demo", help="where the run folder goes (default: ./tiforge-demo)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Library chatter (optional-dependency notices, deprecation hints) drowns tiforge's own messages.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from .data import DatasetError
    from .embedding_files import EmbeddingFileError
    from .model_loading import ModelLoadError
    from .tokens import TokenError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, EmbeddingFileError, ModelLoadError, TokenError) as err:
        print(f"tiforge: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
