"""The `tiforge` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources

from tiforge.frontends.console_output import PlainProgress, configure_output, plain_progress_wanted


def _example_config() -> str:
    return (resources.files("tiforge") / "assets" / "example_config.yaml").read_text(encoding="utf-8")


def _train_config(args):
    """YAML file (optional), then --set overrides, then flags of any of the tools users come from."""
    from tiforge.config.flags import apply_flag_overrides, flags_to_overrides
    from tiforge.config.schema import ConfigError
    from tiforge.config.loading import apply_overrides, config_from_dict, read_config_file

    data = read_config_file(args.config) if args.config else {}
    data = apply_overrides(data, args.set)
    data = apply_flag_overrides(data, flags_to_overrides(args.flags), tool_defaults=not args.config)
    args.debug_dataset = bool(data.pop("debug_dataset", False))
    if not args.config:
        from tiforge.config.flag_help import missing_required

        missing = missing_required(data, args.flags)
        if missing:
            raise ConfigError("command line: " + ("\n  - ".join(["", *missing]) if len(missing) > 1 else missing[0]))
    return config_from_dict(data, args.config or "command line")


def _cmd_dataset_check(args) -> int:
    from tiforge.data.checks import report

    print(report(_train_config(args), verbose_items=args.items))
    return 0


def _cmd_train(args) -> int:
    _quiet_library_progress()
    config = _train_config(args)
    if args.debug_dataset:  # kohya's --debug_dataset: show the data as trained, then stop
        from tiforge.data.checks import report

        print(report(config))
        return 0
    if args.print_config:
        from tiforge.config.loading import dump_config

        print(dump_config(config), end="")
        return 0
    from tiforge.training.events import on_steps
    from tiforge.training.recipe import train

    if args.json:
        import json

        from tiforge.training.events import as_json

        train(config, progress=False, listener=lambda event: print(json.dumps(as_json(event)), flush=True))
        return 0
    if not args.quiet and plain_progress_wanted():
        result = train(config, progress=False, listener=on_steps(PlainProgress()))  # no redrawn bars in a log file
    else:
        result = train(config, progress=not args.quiet)
    print(f"embedding: {result.embedding_path}")
    print(f"run folder: {result.run_dir}")
    return 0


def _cmd_train_many(args) -> int:
    """Several concepts one after another, the model loaded once; exit 1 when any failed."""
    _quiet_library_progress()
    from tiforge.config.loading import apply_overrides, config_from_dict, load_config, read_config_file
    from tiforge.config.schema import ConfigError
    from tiforge.training.queue import concepts_from_configs, concepts_from_folder, summary, train_queue
    from tiforge.training.recipe import train

    if args.concepts:
        if len(args.configs) != 1:
            raise ConfigError("train-many --concepts DIR: give exactly one config, the one every concept starts from")
        base = apply_overrides(read_config_file(args.configs[0]), args.set)
        concepts = concepts_from_folder(base, args.concepts, config_from_dict)
    else:
        if not args.configs:
            raise ConfigError("train-many: give the concepts' config files, or one config and --concepts DIR")
        concepts = concepts_from_configs(args.configs, lambda path: load_config(path, args.set))
    outcomes = train_queue(concepts, lambda config: train(config, progress=not args.quiet),
                           announce=lambda line: print(f"== {line}", file=sys.stderr, flush=True))
    print(summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def _cmd_config(args) -> int:
    if args.example:
        print(_example_config(), end="")
        return 0
    if args.check:
        # imported here: pydantic and the config schema take 0.3-0.5 s, which convert and inspect need not pay
        from tiforge.config.loading import dump_config, load_config

        config = load_config(args.check, args.set)
        print(f"{args.check}: OK")
        if args.verbose:
            print(dump_config(config), end="")
        return 0
    print("use `tiforge config --example` or `tiforge config --check FILE`", file=sys.stderr)
    return 2


def _cmd_ui(args) -> int:
    _quiet_library_progress()
    from tiforge.frontends.console_ui import run_ui

    run_ui()
    return 0


def _cmd_web(args) -> int:
    from tiforge.web.server import serve

    serve(host=args.host, port=args.port, root=args.root, open_browser=not args.no_browser)
    return 0


def _cmd_demo(args) -> int:
    _quiet_library_progress()
    from tiforge.toy.demo import run_demo

    if not args.quiet and plain_progress_wanted():
        from tiforge.training.events import on_steps

        run_demo(args.output_dir, steps=args.steps, progress=False, listener=on_steps(PlainProgress()))  # no bars
    else:
        run_demo(args.output_dir, steps=args.steps, progress=not args.quiet)
    return 0


def _cmd_convert(args) -> int:
    from tiforge.embeddings.convert import convert

    out = convert(args.input, args.output, args.to, token=args.token, precision=args.precision)
    print(f"wrote {out} ({args.to} layout)")
    return 0


def _cmd_inspect(args) -> int:
    if args.model:
        _quiet_library_progress()
    from tiforge.embeddings.inspection import describe

    print(describe(args.file, model=args.model, single_file_config=args.single_file_config))
    return 0


def _cmd_install(args) -> int:
    from tiforge.embeddings.convert import install_for_invokeai

    print(f"installed {install_for_invokeai(args.file, args.root, args.trigger)}")
    return 0


def _cmd_generate(args) -> int:
    _quiet_library_progress()
    from tiforge.embeddings.generate import generate_images

    paths = generate_images(
        model=args.model, embeddings=args.embedding, tokens=args.token, prompt=args.prompt,
        negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
        width=args.width, height=args.height, count=args.count, out_dir=args.out,
        single_file_config=args.single_file_config, hf_variant=args.hf_variant, clip_skip=args.clip_skip,
        max_token_length=args.max_token_length,
    )
    for p in paths:
        print(p)
    return 0


class _Parser(argparse.ArgumentParser):
    """Also takes a function as `epilog`, called only when the help is shown: train's flag list
    needs the config schema (pydantic, about 0.4 s), which convert and inspect need not load."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _train_epilog() -> str:
    from tiforge.config.flags import known_flag_names
    from tiforge.config.flag_help import grouped_flag_help

    return ("Every config field is also a flag, and so are the flags of the diffusers example, invokeai-ti and "
            "kohya-ss;\nflags take a value (--max_train_steps 3000 or --max_train_steps=3000); yes/no ones may "
            "stand alone.\n" + grouped_flag_help(known_flag_names()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiforge", description="Textual Inversion training for Stable Diffusion.")
    parser.add_argument("--version", action="version", version=f"tiforge {__import__('tiforge').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train", help="train an embedding from a YAML config and/or flags",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_train_epilog,
    )
    # The optional YAML path right after `train` is taken off in main(): argparse would mistake
    # the values of other tools' flags for it.
    p.usage = "tiforge train [CONFIG.yaml] [--set KEY=VALUE ...] [--print-config] [-q] [--json] [--FLAG VALUE ...]"
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted for nested ones (e.g. optimizer.learning_rate=1e-3)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="one JSON object per step on stdout (for scripts), no bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "train-many", help="train several independent concepts one after another, the model loaded once",
        usage="tiforge train-many CONFIG.yaml [CONFIG.yaml ...] | tiforge train-many BASE.yaml --concepts DIR",
        description="Each config file is one concept; or, with --concepts, each subfolder DIR/<name>/ of pictures "
                    "is one: placeholder_token <name>, outputs in base_output_dir/<name>, and a concept.yaml in the "
                    "folder overrides any field for it. A failing concept is reported and the others still train; "
                    "a summary comes at the end (exit 1 if any failed).")
    p.add_argument("configs", nargs="*", metavar="CONFIG.yaml")
    p.add_argument("--concepts", metavar="DIR", help="one concept per subfolder, on the one config given")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field for every concept")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_many)

    p = sub.add_parser("dataset", help="training data tools")
    dataset_sub = p.add_subparsers(dest="dataset_command", required=True)
    p = dataset_sub.add_parser(
        "check", help="check the training data of a config (or flags) before training: every file, caption and token",
        usage="tiforge dataset check [CONFIG.yaml] [--set KEY=VALUE ...] [--items N] [--FLAG VALUE ...]",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--items", type=int, default=None, help="show at most N items in detail (default: all)")
    p.set_defaults(func=_cmd_dataset_check)

    p = sub.add_parser("config", help="print a documented example config, or check one")
    p.add_argument("--example", action="store_true", help="print a documented starting config")
    p.add_argument("--check", metavar="FILE", help="validate a config file without training")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-v", "--verbose", action="store_true", help="with --check, print the resolved config")
    p.set_defaults(func=_cmd_config)

    _add_embedding_commands(sub)

    p = sub.add_parser("ui", help="keyboard-driven console front end (like invokeai-ti --gui)")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("web", help="configure, run and watch trainings in the browser (a local web server)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other needs the printed token)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--root", default=".", help="folder whose runs are listed and where the UI's configs go (default: .)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_web)

    p = sub.add_parser("demo", help="teach the built-in toy model a new word from 6 pictures and judge the result (offline)")
    p.add_argument("--output-dir", default="tiforge-demo", help="where the run folder goes (default: ./tiforge-demo)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_embedding_commands(sub) -> None:
    """convert, inspect, install, generate: the commands on embedding files."""
    p = sub.add_parser("convert", help="rewrite an embedding in another tool's layout (vectors unchanged)")
    p.add_argument("input")
    p.add_argument("output", help="the container follows the extension: .safetensors, .bin, .pt, .ckpt, .png (a1111)")
    p.add_argument("--to", required=True, choices=["diffusers", "a1111", "kohya"],
                   help="diffusers {token: tensor}; a1111 string_to_param; kohya emb_params (SDXL: clip_l/clip_g)")
    p.add_argument("--token", help="the trigger to store (default: the input's trigger)")
    p.add_argument("--precision", choices=["float32", "float16", "bfloat16"], help="default: keep the input's")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("inspect", help="show what an embedding file holds and which models it fits")
    p.add_argument("file")
    p.add_argument("--model", help="compare with this model's vocabulary (norms, nearest tokens)")
    p.add_argument("--single-file-config", help="local diffusers folder for a single-file --model offline")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("install", help="install an embedding into InvokeAI's <root>/embeddings/<trigger>/")
    p.add_argument("file")
    p.add_argument("--root", required=True, help="the InvokeAI root folder (e.g. ~/invokeai)")
    p.add_argument("--trigger", help="default: the embedding's trigger")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("generate", help="generate pictures with one or more embeddings loaded")
    p.add_argument("--model", required=True, help="hub id, diffusers folder or single .safetensors/.ckpt file")
    p.add_argument("--embedding", action="append", required=True, help="an embedding file; repeat for several")
    p.add_argument("--token", action="append", help="trigger for each --embedding, in order (default: its own)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--out", default="tiforge-images", help="output folder")
    p.add_argument("--single-file-config")
    p.add_argument("--hf-variant")
    p.add_argument("--clip-skip", "--clip_skip", type=int, help="default: what the embedding was trained with")
    p.add_argument("--max-token-length", "--max_token_length", type=int, choices=[75, 150, 225],
                   help="long prompts in 75-token windows; default: what the embedding was trained with")
    p.set_defaults(func=_cmd_generate)


def _quiet_library_progress() -> None:
    """Model-loading bars of diffusers and transformers repeat on every load; tiforge shows its own.
    Called by the commands that load models: importing these libraries costs seconds."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except ImportError:
        pass


# Errors a user can fix: message and exit code 2, no traceback. Looked up by module so that the
# CLI need not import torch-heavy modules before it knows the command.
USER_ERRORS = {
    "tiforge.config.schema": "ConfigError", "tiforge.training.checkpoints": "CheckpointError",
    "tiforge.data.sources": "DatasetError",
    "tiforge.embeddings.files": "EmbeddingFileError", "tiforge.model.loading": "ModelLoadError",
    "tiforge.training.run_folders": "OutputError", "tiforge.model.placeholders": "TokenError",
}


def _user_error_types() -> tuple[type, ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules)


def _fail(args, message: str, code: int, prefix: str = "tiforge: error: ") -> int:
    """Text on stderr; with --json also one {"event": "error"} line on stdout for scripts."""
    print(f"{prefix}{message}", file=sys.stderr)
    if getattr(args, "json", False):
        import json

        print(json.dumps({"event": "error", "message": message, "exit_code": code}), flush=True)
    return code


_SWITCHES = ("-q", "--quiet", "--json", "--print-config")


def main(argv: list[str] | None = None) -> int:
    # Library chatter (optional-dependency notices, deprecation hints) drowns tiforge's own messages.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    head = 2 if argv[:2] == ["dataset", "check"] else 1 if argv[:1] == ["train"] else 0
    at = head
    while head and at < len(argv) and argv[at] in _SWITCHES:
        at += 1  # `tiforge train -q my.yaml`: switches that take no value may come first
    if head and at < len(argv) and not argv[at].startswith("-"):
        # The YAML file comes right after `train`; later bare words are values of other tools' flags.
        config_path = argv.pop(at)
    args, extra = parser.parse_known_args(argv)
    if head:
        args.config, args.flags = config_path, extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    configure_output(quiet=getattr(args, "quiet", False) or getattr(args, "json", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130, prefix="tiforge: ")
    except Exception as err:
        from_module = sys.modules.get("tiforge.embeddings.hub")
        if from_module is not None and isinstance(err, from_module.HubUploadError):
            return _fail(args, str(err), 1)
        stopped = sys.modules.get("tiforge.training.interrupts")
        if stopped is not None and isinstance(err, stopped.TrainingStopped):
            return _fail(args, str(err), err.exit_code, prefix="tiforge: ")
        if isinstance(err, _user_error_types()):
            return _fail(args, str(err), 2)
        if getattr(args, "json", False):
            _fail(args, f"{type(err).__name__}: {err}", 1, prefix="tiforge: internal error: ")
        raise


if __name__ == "__main__":
    sys.exit(main())
