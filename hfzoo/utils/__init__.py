"""Bottom-tier helpers any part of hfzoo may import (they import only the standard library, torch,
transformers and huggingface_hub, and their siblings here)."""
