"""Convert a released SimVQ image tokenizer (youngsheen/SimVQ; Hub zyx123/SimVQ) into an hfzoo SimVQ folder.

    huggingface-cli download zyx123/SimVQ --include "vq_log/simvq_65k/*" --local-dir simvq
    python conversions/simvq_to_hfzoo.py simvq/vq_log/simvq_65k out/simvq-65k            # EMA weights
    python conversions/simvq_to_hfzoo.py path/to/epoch=49-step=...ckpt out/x --config path/to/config.yaml --weights raw

The source may be a folder (one latest ``*.ckpt`` inside, ``config.yaml`` beside it or above) or a checkpoint
file. ``loss.*`` keys (LPIPS, discriminator) are ignored; ``model_ema.*`` supplies the weights by default, as in
the authors' evaluation. The logic lives in ``hfzoo.convert.simvq_ckpt``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.simvq_ckpt import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
