"""Convert a MosaicML MosaicBERT checkpoint into an hfzoo MosaicBERT folder (loads without MosaicML's code).

    huggingface-cli download mosaicml/mosaic-bert-base --local-dir mosaic-bert-base
    huggingface-cli download bert-base-uncased tokenizer.json tokenizer_config.json vocab.txt --local-dir bert-tok
    python conversions/mosaicml_to_mosaicbert.py mosaic-bert-base out/mosaic-bert-base --tokenizer bert-tok

    # a Composer training checkpoint (state['model'] with 'model.' prefixes)
    python conversions/mosaicml_to_mosaicbert.py ep1-ba1000-rank0.pt out/my-bert --config config.json

The logic (config mapping, key checks, Composer unwrapping) lives in ``hfzoo.convert.mosaicml_bert``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.mosaicml_bert import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
