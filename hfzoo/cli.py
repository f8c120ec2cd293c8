"""The ``hfzoo`` command: list, export, card, convert, demo.

Bad input prints one line ``hfzoo <command>: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def _cmd_list(args) -> int:
    from .gallery import DEMOS
    from .models import ARCHITECTURES

    rows = [("name", "model_type", "task models", "demo", "checkpoint")]
    for name, arch in ARCHITECTURES.items():
        tasks = ", ".join(a.replace("AutoModelFor", "") for a in arch.auto_models if a != "AutoModel") or "-"
        rows.append((name, arch.model_type, tasks, "yes" if name in DEMOS else "-", arch.checkpoint or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _cmd_export(args) -> int:
    from .hub.export import export

    path = export(args.source, args.output, model_id=args.model_id, overwrite=args.overwrite, card=not args.no_card)
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
    skip = {"command", "func", "converter", "converter_name", "source", "output", "overwrite"}
    options = {k: v for k, v in vars(args).items() if k not in skip}
    path = mod.convert(args.source, args.output, overwrite=args.overwrite, **options)
    print(f"converted {args.source} -> {path}")
    return 0


def _cmd_demo(args) -> int:
    from .gallery import build_gallery

    build_gallery().queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .convert import converters

    parser = argparse.ArgumentParser(prog="hfzoo", description="Research architectures as native Hugging Face "
                                     "models: list them, export Hub-ready folders, convert checkpoints, demo.")
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
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("card", help="render a model card for a model folder or checkpoint")
    p.add_argument("source")
    p.add_argument("-o", "--output", help="write to this file instead of printing")
    p.add_argument("--model-id")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser("convert", help="convert an original research checkpoint to an hfzoo folder")
    conv = p.add_subparsers(dest="converter_name", metavar="SOURCE_FORMAT")
    conv.required = True
    for name, mod in converters().items():
        c = conv.add_parser(name, help=mod.DESCRIPTION)
        c.add_argument("source", help="checkpoint file or folder in the original format")
        c.add_argument("output", help="hfzoo folder to create")
        c.add_argument("--overwrite", action="store_true")
        mod.add_arguments(c)
        c.set_defaults(func=_cmd_convert, converter=mod)

    p = sub.add_parser("demo", help="serve the gallery of demos (Gradio)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as e:  # OSError covers missing files and unreachable repos
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"hfzoo {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
