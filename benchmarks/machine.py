"""Describe the machine a benchmark runs on, as every benchmark's table is headed with it.

The description itself is :func:`common.describe_machine`, shared by the benchmarks.

    python benchmarks/machine.py        # two lines: the hardware and load, then the software
"""

from __future__ import annotations

import common

if __name__ == "__main__":
    print(common.format_machine(common.describe_machine()))
