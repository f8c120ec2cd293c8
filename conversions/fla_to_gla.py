"""Convert a flash-linear-attention GLA checkpoint folder into an hfzoo GLA folder (loads without fla).

    huggingface-cli download fla-hub/gla-340M-15B --local-dir gla-340M-15B
    python conversions/fla_to_gla.py gla-340M-15B out/gla-340M-15B

The logic (config mapping, key checks) lives in ``hfzoo.convert.fla_gla``.
"""

import argparse

from hfzoo.convert import fla_gla


def main():
    parser = argparse.ArgumentParser(description=fla_gla.DESCRIPTION)
    parser.add_argument("source", help="folder with config.json (model_type 'gla') and safetensors/bin weights")
    parser.add_argument("output", help="folder to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    fla_gla.add_arguments(parser)
    args = vars(parser.parse_args())
    out = fla_gla.convert(args.pop("source"), args.pop("output"), **args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
