#!/usr/bin/env python3
"""Benchmark vlserve against raw llama-cpp-python and llama.cpp's server (docs/benchmarks.md).

The benchmark is part of the package (vlserve/bench/, also `vlserve bench`); this is its
command in a checkout:

    .venv/bin/python scripts/bench.py [--scenario decode|turns|gateway|parallel|all] [--help]
"""

from vlserve.bench import main

if __name__ == "__main__":
    main()
