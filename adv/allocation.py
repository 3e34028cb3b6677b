"""Run the adv benchmark: `python allocation.py --nump p [--config FILE] [--section.field=value ...]`.

Thin wrapper: all logic is in rain/parallel.py. Default config: configs/adv.yaml. See README.md here.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

if __name__ == "__main__":
    try:
        from rain.parallel import launcher_main

        sys.exit(launcher_main(sys.argv[1:], benchmark="adv", default_config=ROOT / "configs" / "adv.yaml"))
    except KeyboardInterrupt:  # Ctrl-C while Python is still importing
        print("rain: interrupted", file=sys.stderr)
        sys.exit(130)
