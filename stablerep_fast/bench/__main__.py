"""``python -m stablerep_fast.bench``: the same as ``stablerep-fast bench``."""

import sys

from stablerep_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
