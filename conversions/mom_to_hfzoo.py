"""Convert a MoM repository checkpoint folder (``MomGLAForCausalLM``, model_type ``mom_gla``) into an hfzoo MoM
folder that loads without fla or the MoM code.

    python conversions/mom_to_hfzoo.py path/to/mom_gla_checkpoint out/mom-hfzoo
    # the same as: hfzoo convert mom-gla path/to/mom_gla_checkpoint out/mom-hfzoo

The logic (config mapping, key renames and checks) lives in ``hfzoo.convert.mom_gla``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.mom_gla import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
