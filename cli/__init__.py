"""The `hmdf` command line (typer + rich over the `hmdf_deploy` library); `entry` is its console script."""

import os
import sys


def entry() -> None:
    """`hmdf`: load the commands (importing torch takes a second or two) with Ctrl-C already
    answered as everywhere else, `error: interrupted` and exit 130, then run the command line."""
    # OpenMP threads spin while they wait for work; beside another busy process torch's default threads
    # then made training up to 14x and streaming steps up to 4x slower than threads that sleep
    # (benchmarks/RESULTS.md, "Threads"). OpenMP reads this once, when torch loads it: before torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from hmdf_deploy.cli.main import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    main()
