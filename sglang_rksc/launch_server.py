"""`python -m sglang_rksc.launch_server [SGLang flags]`: see `sglang_rksc.srt.launcher`."""

import sys

from sglang_rksc.srt.launcher import main

if __name__ == "__main__":
    sys.exit(main())
