"""`python -m worker.sequencer`: the task pod's sequencer."""

from __future__ import annotations

import sys

from worker.sequencer.sequencer import main

sys.exit(main())
