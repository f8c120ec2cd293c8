"""Convert a MosaicML MosaicBERT checkpoint into an hfzoo MosaicBERT folder (loads without MosaicML's code).

    huggingface-cli download mosaicml/mosaic-bert-base --local-dir mosaic-bert-base
    huggingface-cli download bert-base-uncased tokenizer.json tokenizer_config.json vocab.txt --local-dir bert-tok
    python conversions/mosaicml_to_mosaicbert.py mosaic-bert-base out/mosaic-bert-base --tokenizer bert-tok

    # a Composer training checkpoint (state['model'] with 'model.' prefixes)
    python conversions/mosaicml_to_mosaicbert.py ep1-ba1000-rank0.pt out/my-bert --config config.json

The logic (config mapping, key checks, Composer unwrapping) lives in ``hfzoo.convert.mosaicml_bert``.
"""

import argparse

from hfzoo.convert import mosaicml_bert


def main():
    parser = argparse.ArgumentParser(description=mosaicml_bert.DESCRIPTION)
    parser.add_argument("source", help="Hub folder (config.json + safetensors/bin) or a Composer .pt checkpoint")
    parser.add_argument("output", help="folder to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    mosaicml_bert.add_arguments(parser)
    args = vars(parser.parse_args())
    out = mosaicml_bert.convert(args.pop("source"), args.pop("output"), **args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
