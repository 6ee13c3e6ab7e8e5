"""The chaos soak, short: 90 seconds of seeded chaos against the real processes (bench/soak.py).

Part of `./test.sh` (and so of CI); `./test.sh -m soak` runs it alone. A failure
prints the soak's report; rerun it with
`python bench/soak.py --minutes 1.5 --seed <seed>` to reproduce.
"""

from __future__ import annotations

import pytest

from bench import soak

SEED = 20261129


@pytest.mark.soak
@pytest.mark.timeout(420)
def test_ninety_seconds_of_chaos_break_no_promise():
    text, violations = soak.run(SEED, minutes=1.5, drain=150.0, quiet=True)
    assert violations == 0, text
