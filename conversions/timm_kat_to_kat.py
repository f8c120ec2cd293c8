"""Convert a released KAT checkpoint (timm format) or a plain timm ViT into an hfzoo KAT folder.

    python conversions/timm_kat_to_kat.py kat_tiny_patch16_224.pth out/kat-tiny
    python conversions/timm_kat_to_kat.py path/to/adamdad_kat_small_snapshot/ out/kat-small
    python conversions/timm_kat_to_kat.py vit_small_state_dict.pth out/kat-small-from-vit --rational-init swish

The logic (key mapping, config inference, checks) lives in ``hfzoo.convert.timm_kat``.
"""

import argparse

from hfzoo.convert import timm_kat


def main():
    parser = argparse.ArgumentParser(description=timm_kat.DESCRIPTION)
    parser.add_argument("source", help="a .safetensors/.pth/.pt/.bin state dict, or a folder holding one")
    parser.add_argument("output", help="folder to write (model.safetensors, config.json, preprocessor_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    timm_kat.add_arguments(parser)
    args = vars(parser.parse_args())
    out = timm_kat.convert(args.pop("source"), args.pop("output"), **args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
