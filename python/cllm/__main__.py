"""``python -m cllm ARGS``: the ``cllm`` command, where the console script is not on PATH."""

from ._cli import main

main()
