"""Cost of a lease renewal (not journaled) against a journaled operation on the SQLite ledger.

Renews one leased claim ``--ops`` times, then consumes a tiny amount of it ``--ops`` times (each a journal entry),
on a fresh SQLite file with ``synchronous=FULL`` (every commit fsynced), and prints the mean time per operation
and how many journal entries each kind added (docs/ledger.md, "Leases"):

    python simulations/benchmarks/bench_renew.py [--ops 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.ledger.sql import open_ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    n = parser.parse_args().ops
    with tempfile.TemporaryDirectory() as d, open_ledger(f"sqlite:///{Path(d) / 'l.db'}", BasicComposition()) as led:
        led.add_block(Block("b", EpsDelta(1.0, 1e-6)))
        led.unlock_to([0], [1.0])
        led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}, lease=300.0))
        led.allocate("c", 0.0)
        j0 = led.journal_length
        t = time.perf_counter()
        for i in range(n):
            led.renew("c", float(i))
        renew = (time.perf_counter() - t) / n
        j1 = led.journal_length
        t = time.perf_counter()
        for i in range(n):
            led.consume("c", {"b": EpsDelta(1e-6, 0.0)}, float(i))
        consume = (time.perf_counter() - t) / n
        j2 = led.journal_length
    print(f"renew   {renew * 1e3:.2f} ms/op, journal +{j1 - j0}")
    print(f"consume {consume * 1e3:.2f} ms/op, journal +{j2 - j1}")


if __name__ == "__main__":
    main()
