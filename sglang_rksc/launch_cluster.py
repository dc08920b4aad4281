"""`python -m sglang_rksc.launch_cluster [--replicas N] [-- server flags]`: see `sglang_rksc.cluster.launcher`."""

import sys

from sglang_rksc.cluster.launcher import main

if __name__ == "__main__":
    sys.exit(main())
