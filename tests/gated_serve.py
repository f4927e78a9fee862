"""``endorm serve`` with a gate in tokenization, for tests that decide by control what runs while a request
is being tokenized: an item whose text contains ``GATE-<name>`` creates ``<ENDORM_TEST_GATE_DIR>/<name>.entered``
when its tokenization starts and waits there until ``<name>.release`` exists.

    python -m tests.gated_serve serve --model ... (the flags of endorm serve)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from endorm_server.inputs.tokenization import PairEncoder

GATE = re.compile(r"GATE-(\w+)")


def _install(gate_dir: Path) -> None:
    encode = PairEncoder.encode

    def gated(self, *args, **kwargs):
        m = GATE.search(json.dumps([args, kwargs], default=str))
        if m:
            (gate_dir / f"{m.group(1)}.entered").touch()
            while not (gate_dir / f"{m.group(1)}.release").exists():
                time.sleep(0.01)
        return encode(self, *args, **kwargs)

    PairEncoder.encode = gated


if __name__ == "__main__":
    _install(Path(os.environ["ENDORM_TEST_GATE_DIR"]))
    from endorm_server.cli import main

    sys.exit(main(sys.argv[1:]))
