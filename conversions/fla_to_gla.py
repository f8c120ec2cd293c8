"""Convert a flash-linear-attention GLA checkpoint folder into an hfzoo GLA folder (loads without fla).

    huggingface-cli download fla-hub/gla-340M-15B --local-dir gla-340M-15B
    python conversions/fla_to_gla.py gla-340M-15B out/gla-340M-15B

The logic (config mapping, key checks) lives in ``hfzoo.convert.fla_gla``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.fla_gla import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
