"""The `hmdf` command line (typer + rich over the `hmdf_deploy` library); `entry` is its console script."""

import sys


def entry() -> None:
    """`hmdf`: load the commands (importing torch takes a second or two) with Ctrl-C already
    answered as everywhere else, `error: interrupted` and exit 130, then run the command line."""
    try:
        from hmdf_deploy.cli.main import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    main()
