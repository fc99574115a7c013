"""``python tools/benchmark [--out bench/] [--quick] [--device cuda]`` (the package's own folder is not a
package root when run this way: its parent, ``tools/``, goes on the path)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.cli import main

main()
