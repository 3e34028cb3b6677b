"""`python -m rain.judge judge ...` / `python -m rain.judge report ...` (same as `rain judge|report`)."""

import sys

from rain.judge.cli import judge_main, report_main


def main(argv: list[str]) -> int:
    commands = {"judge": judge_main, "report": report_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m rain.judge {judge,report} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
