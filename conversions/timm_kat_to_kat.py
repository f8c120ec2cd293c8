"""Convert a released KAT checkpoint (timm format) or a plain timm ViT into an hfzoo KAT folder.

    python conversions/timm_kat_to_kat.py kat_tiny_patch16_224.pth out/kat-tiny
    python conversions/timm_kat_to_kat.py path/to/adamdad_kat_small_snapshot/ out/kat-small
    python conversions/timm_kat_to_kat.py vit_small_state_dict.pth out/kat-small-from-vit --rational-init swish

The logic (key mapping, config inference, checks) lives in ``hfzoo.convert.timm_kat``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.timm_kat import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
