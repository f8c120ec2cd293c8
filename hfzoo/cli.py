"""The ``hfzoo`` command: list, export, card, convert, demo.

Bad input prints one line ``hfzoo <command>: error: ...`` (naming the file at fault) and exits with status 2.
Set ``HFZOO_TRACEBACK=1`` to see the full traceback of an unexpected error instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hfzoo")
    except PackageNotFoundError:   # running from a source tree that is not installed
        return "unknown (not installed)"


def _cmd_list(args) -> int:
    from .models import ARCHITECTURES

    rows = [("name", "model_type", "task models", "demo", "converters", "checkpoint")]
    for name, arch in ARCHITECTURES.items():
        tasks = ", ".join(a.replace("AutoModelFor", "") for a in arch.models if a != "AutoModel") or "-"
        conv = ", ".join(_converter_source(m) for m in arch.converters) or "-"
        rows.append((name, arch.model_type, tasks, "yes" if arch.demo else "-", conv, arch.checkpoint or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _converter_source(module: str) -> str:
    import importlib

    return importlib.import_module(f"hfzoo.convert.{module}").SOURCE


def _cmd_export(args) -> int:
    from .hub.export import export

    path = export(args.source, args.output, model_id=args.model_id, overwrite=args.overwrite, card=not args.no_card,
                  tokenizer=args.tokenizer, processor=args.processor)
    print(f"exported {args.source} -> {path}")
    return 0


def _cmd_card(args) -> int:
    from .hub.cards import render_card
    from .hub.export import load_model, shipped_name

    model, folder = load_model(args.source)
    card = render_card(model, model_id=args.model_id, checkpoint=shipped_name(folder))
    if args.output:
        card.save(args.output)
        print(f"wrote {args.output}")
    else:
        print(str(card))
    return 0


def _cmd_convert(args) -> int:
    mod = args.converter
    _refuse_existing(args.output, args.overwrite)   # before minutes of reading a large checkpoint
    options = {dest: getattr(args, dest) for dest in args.converter_options}
    path = mod.convert(args.source, args.output, overwrite=args.overwrite, **options)
    print(f"converted {args.source} -> {path}")
    return 0


def _refuse_existing(output, overwrite: bool) -> None:
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(output)} already exists (pass --overwrite to replace it)")


def _cmd_demo(args) -> int:
    from .gallery import build_gallery
    from .gallery.user_input import MAX_UPLOAD_BYTES

    build_gallery().queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                                   max_file_size=MAX_UPLOAD_BYTES)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .convert import converters

    parser = argparse.ArgumentParser(prog="hfzoo", description="Research architectures as native Hugging Face "
                                     "models: list them, export Hub-ready folders, convert checkpoints, demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors, not progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="list the registered architectures")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("export", help="write a Hub-ready folder (weights, config, standalone remote code, card)")
    p.add_argument("source", help="model folder, shipped checkpoint name (e.g. tiny-gla) or Hub repo id")
    p.add_argument("output", help="folder to create")
    p.add_argument("--model-id", help="repo id shown in the model card (default: the output folder's name)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--no-card", action="store_true", help="do not write README.md")
    p.add_argument("--tokenizer", metavar="PATH", help="folder (or Hub repo id) whose tokenizer files to add "
                   "(default: the source folder's own, when it has them)")
    p.add_argument("--processor", metavar="PATH", help="folder (or Hub repo id) whose image-processor files to add "
                   "(default: the source folder's own, when it has them)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("card", help="render a model card for a model folder or checkpoint")
    p.add_argument("source", help="model folder, shipped checkpoint name (e.g. tiny-gla) or Hub repo id")
    p.add_argument("-o", "--output", help="write to this file instead of printing")
    p.add_argument("--model-id", help="repo id shown in the card (default: hfzoo-<architecture>)")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser("convert", help="convert an original research checkpoint to an hfzoo folder")
    conv = p.add_subparsers(dest="converter_name", metavar="SOURCE_FORMAT")
    conv.required = True
    for name, mod in converters().items():
        c = conv.add_parser(name, help=mod.DESCRIPTION, description=mod.DESCRIPTION)
        c.add_argument("source", help="checkpoint file or folder in the original format")
        c.add_argument("output", help="hfzoo folder to create")
        c.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
        before = {a.dest for a in c._actions}
        mod.add_arguments(c)
        own = tuple(a.dest for a in c._actions if a.dest not in before)
        c.set_defaults(func=_cmd_convert, converter=mod, converter_options=own)

    p = sub.add_parser("demo", help="serve the gallery of demos (Gradio)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    p.set_defaults(func=_cmd_demo)

    from .peft.cli_commands import add_peft_commands

    add_peft_commands(sub)  # pissa, merge
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and e.args:
        text = f"missing key {e.args[0]!r}"
    line = text.splitlines()[0] if text else ""
    expected = isinstance(e, (ValueError, OSError, TypeError, ImportError))
    return line if expected and line else f"{type(e).__name__}: {line}" if line else type(e).__name__


def _show_progress(quiet: bool):
    logger = logging.getLogger("hfzoo")
    if quiet or logger.handlers:
        return None
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def _quiet_transformers():
    """transformers' own loading/writing bars would print between our messages and around an error line.
    Returns a function that restores them (``main`` may be called from Python)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return lambda: None
    if not hf_logging.is_progress_bar_enabled():
        return lambda: None
    hf_logging.disable_progress_bar()
    return hf_logging.enable_progress_bar


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _show_progress(args.quiet)
    restore_bars = _quiet_transformers()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"hfzoo {args.command}: interrupted (nothing was left half-written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:   # one line for the user; HFZOO_TRACEBACK=1 shows the traceback
        if os.environ.get("HFZOO_TRACEBACK", "") not in ("", "0"):
            raise
        msg = _one_line(e)
        named = [str(v) for v in (getattr(args, "source", None), getattr(args, "output", None)) if v]
        if named and not any(n in msg for n in named):
            msg = f"{named[0]}: {msg}"   # every message names the file or folder at fault
        print(f"hfzoo {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        restore_bars()
        if handler is not None:
            logging.getLogger("hfzoo").removeHandler(handler)
            logging.getLogger("hfzoo").setLevel(handler.previous_level)


if __name__ == "__main__":
    sys.exit(main())
