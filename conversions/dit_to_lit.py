"""Inherit a DiT checkpoint's weights into LiT (everything but the attention), or convert the DiT itself.

    python conversions/dit_to_lit.py path/to/DiT-XL-2-256/ out/lit-xl-2              # diffusers folder
    python conversions/dit_to_lit.py DiT-XL-2-256x256.pt out/lit-xl-2 --num-heads 4  # original checkpoint
    python conversions/dit_to_lit.py DiT-XL-2-256x256.pt out/dit-xl-2 --target dit   # DiT as hfzoo softmax variant

The logic (key mapping, config inference, the loaded/initialized report) lives in ``hfzoo.convert.dit_lit``.
"""

import sys

from hfzoo.cli import main
from hfzoo.convert.dit_lit import SOURCE, convert  # noqa: F401  (importable: convert(source, output, ...))

if __name__ == "__main__":
    sys.exit(main(["convert", SOURCE, *sys.argv[1:]]))
