"""``python -m workers.ops.cli``: the demo and the benchmarks start their child processes this way."""

import sys

from workers.ops.cli import main

sys.exit(main())
