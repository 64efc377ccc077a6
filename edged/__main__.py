"""``python -m edged`` and the ``edged`` command: the cyclic collector paused before edged is imported."""

import sys

from edged.startgc import pause


def main() -> int:
    pause()  # while edged imports and starts (edged.startgc); run resumes it once ready, the rest at parse
    from edged.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
