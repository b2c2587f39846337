"""The ``cllm`` command, as installed by ``pip install cllm``: the same command as the Rust binary
(``cargo install --path cli``), run inside the extension module. Exit codes are the binary's:
0 ok, 1 a verification or comparison failed, 2 a usage or I/O error."""

import signal
import sys


def main() -> None:
    from ._cllm import cli_main

    # Ctrl-C stops the command at once, as it stops the binary (Python's own handler would only
    # run once the command had returned).
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass
    sys.exit(cli_main(["cllm", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
