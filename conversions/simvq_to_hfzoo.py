"""Convert a released SimVQ image tokenizer (youngsheen/SimVQ; Hub zyx123/SimVQ) into an hfzoo SimVQ folder.

    huggingface-cli download zyx123/SimVQ --include "vq_log/simvq_65k/*" --local-dir simvq
    python conversions/simvq_to_hfzoo.py simvq/vq_log/simvq_65k out/simvq-65k            # EMA weights
    python conversions/simvq_to_hfzoo.py path/to/epoch=49-step=...ckpt out/x --config path/to/config.yaml --weights raw

The source may be a folder (one latest ``*.ckpt`` inside, ``config.yaml`` beside it or above) or a checkpoint
file. ``loss.*`` keys (LPIPS, discriminator) are ignored; ``model_ema.*`` supplies the weights by default, as in
the authors' evaluation. The logic lives in ``hfzoo.convert.simvq_ckpt``.
"""

import argparse

from hfzoo.convert import simvq_ckpt


def main():
    parser = argparse.ArgumentParser(description=simvq_ckpt.DESCRIPTION)
    parser.add_argument("source", help="folder with a Lightning .ckpt and config.yaml, or the .ckpt itself")
    parser.add_argument("output", help="folder to write (config.json, model.safetensors, preprocessor_config.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    simvq_ckpt.add_arguments(parser)
    args = vars(parser.parse_args())
    out = simvq_ckpt.convert(args.pop("source"), args.pop("output"), **args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
