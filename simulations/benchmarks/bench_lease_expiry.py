"""Seconds from the SIGKILL of a job that renews its lease every lease/3 to its claim being expired by the service.

Starts `dpf-sched serve --poll 0.05` (FCFS, SQLite in a temporary directory), then five times: a job process
claims with a 1-s lease, consumes part of its grant, renews in a loop; after one lease length it is SIGKILLed and
the claim's state is polled until it is `expired` (docs/service.md, "Leases"). The bound is lease + one poll
after the last renewal, so the measured time is at most lease + poll:

    python simulations/benchmarks/bench_lease_expiry.py
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from service_support import auth, create_token, start_server

JOB = """
import sys, time
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.client import ServiceClient
url, token, lease, cid = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
with ServiceClient(url, token) as client:
    client.submit(Claim(cid, {"b": EpsDelta(0.1, 0.0)}, lease=lease))
    client.wait(cid, 30.0)
    client.consume(cid, {"b": EpsDelta(0.05, 0.0)})
    print("go", flush=True)
    while True:
        client.renew(cid)
        time.sleep(lease / 3)
"""
d = Path(tempfile.mkdtemp())
db = f"sqlite:///{d / 'l.db'}"
admin = create_token(db, "ops", admin=True)
alice = create_token(db, "alice")
s = start_server(db, "fcfs", poll=0.05, log_dir=d)
lease = 1.0
out = []
try:
    with httpx.Client(base_url=s.url, timeout=30) as c:
        c.post("/v1/blocks", json={"id": "b", "budget": {"epsilon": 10.0}}, headers=auth(admin))
        for k in range(5):
            args = [sys.executable, "-c", JOB, s.url, alice, str(lease), f"j{k}"]
            job = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
            assert job.stdout is not None and job.stdout.readline().strip() == "go"
            time.sleep(lease)
            job.kill()
            t0 = time.monotonic()
            job.wait()
            while c.get(f"/v1/claims/j{k}", headers=auth(alice)).json()["state"] != "expired":
                time.sleep(0.01)
            out.append(time.monotonic() - t0)
finally:
    s.kill()
print("lease", lease, "kill->expired s:", [round(x, 3) for x in out])  # noqa: T201
