#!/usr/bin/env python3
"""Write a random-weight Qwen3-VL GGUF and its mmproj (the test, demo and bench model).

The generator is part of the package (vlserve/library/tinymodel.py, so that an installed
vlserve can make its demo model); this is its command in a checkout:

    .venv/bin/python scripts/make_tiny_model.py [--out-dir models/tiny] [--preset …] [--help]
"""

from vlserve.library.tinymodel import main

if __name__ == "__main__":
    main()
