"""The core never imports torch or opacus: the integration is an optional extra, loaded only when asked for."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_and_the_integrations_package_loads_neither_torch_nor_opacus() -> None:
    code = (
        "import sys\n"
        "import dpf_sched, dpf_sched.scheduler, dpf_sched.accounting, dpf_sched.sim.replay, dpf_sched.cli\n"
        "import dpf_sched.integrations\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'opacus'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
