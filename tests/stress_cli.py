"""Repeat test_faults.test_signal_ends_quietly_and_reports_what_it_read's scenario (a `pytracer -j -P PORT`
process, one conversation, SIGTERM at once) and check its lines like check_connection; on a failure, print
the JSON lines and the raw records the tracer read (logged by a wrapper that records every record batch
and every line batch written, before and after conversion).

    python tests/stress_cli.py RUNS [SIGNAL]      exit status 1 if any run failed"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import traffic  # noqa: E402
from support.procview import wait_attached  # noqa: E402

NSEND, NRECV = 300_000, 7_000
WRAPPER = r'''
import os, signal, sys
sys.path.insert(0, %(root)r)
signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
log = open(%(log)r, "w", buffering=1)
from pytracer.tools.tcpsnoop import tracer as T
from pytracer.toolkit import writers as W
orig_convert = T.TcpSnoop.convert
def convert(self, records, out):
    names = {v: n for n, v in vars(self.k).items() if n.startswith("EV_")}
    for r in records:
        sk, pid, uid, netns, lport, rport, laddr, raddr, comm, fam = self._identity.unpack(r[-1])
        log.write("rec %%s %%s d=%%d fl=%%#x attr=%%d pl=%%d tx=%%d rx=%%d pid=%%d comm=%%s %%d->%%d\n" %% (
            r[0], names.get(r[7], r[7]), r[8], r[9], r[10], r[6], r[1], r[2], pid, comm.rstrip(b"\0").decode(), lport, rport))
    log.write("convert start n=%%d\n" %% len(records))
    orig_convert(self, records, out)
    log.write("convert done lines=%%d\n" %% len(out))
T.TcpSnoop.convert = convert
from pytracer.cli import main
main()
'''


def one(tmp, sig):
    log = os.path.join(tmp, "records.log")
    wrapper = os.path.join(tmp, "wrapper.py")
    with open(wrapper, "w") as f:
        f.write(WRAPPER % {"root": ROOT, "log": log})
    s = traffic.server("tsrv", "4", "127.0.0.1", NSEND, NRECV)
    c = traffic.client("tcli", "4", "127.0.0.1", s.port, NSEND, NRECV)
    out_path, err_path = os.path.join(tmp, "t.out"), os.path.join(tmp, "t.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t = subprocess.Popen([sys.executable, wrapper, "-j", "-P", str(s.port)], stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
        try:
            wait_attached(t)
            c.go()
            c.wait()
            s.wait()
            t.send_signal(sig)
            rc = t.wait(60)
        finally:
            if t.poll() is None:
                t.kill()
                t.wait()
    events = [json.loads(ln) for ln in open(out_path, "rb").read().splitlines()]
    port, spid, cpid = s.port, s.pids["tsrv"], c.pids["tcli"]
    mine = [e for e in events if e.get("event") != "lost" and port in (e["lport"], e["rport"])]
    cs = [e for e in mine if e["rport"] == port]
    ss = [e for e in mine if e["lport"] == port]
    lost = [e for e in events if e.get("event") == "lost"]
    problems = []
    if rc != 0:
        problems.append(f"exit status {rc}")
    if [(e["pid"], e["comm"]) for e in cs if e["event"] == "connect"] != [(cpid, "tcli")]:
        problems.append("connect lines")
    if [(e["dir"], e["pid"], e["comm"], e["payload"]) for e in ss if e["event"] == "accept"] != [
            ("in", spid, "tsrv", 0), ("out", spid, "tsrv", 0), ("in", spid, "tsrv", 0)]:
        problems.append("accept lines")
    for side, who in ((cs, (cpid, "tcli")), (ss, (spid, "tsrv"))):
        owners = {(e["pid"], e["comm"]) for e in side}
        if owners != {who}:
            problems.append(f"owners {owners}, expected {who}")
    for side, close in ((cs, (NSEND, NRECV)), (ss, (NRECV, NSEND))):
        if [(e["tx_bytes"], e["rx_bytes"]) for e in side if e["event"] == "close"] != [close]:
            problems.append("close lines")
    for side, want in ((ss, NSEND), (cs, NRECV)):
        got = sum(e["payload"] for e in side if e["event"] == "recv")
        if got < want and not lost:
            problems.append(f"recv lines carry {got} of {want} bytes and no loss was reported")
    if problems:
        print("FAIL", problems, "lost", lost, "spid", spid, "cpid", cpid)
        print(open(err_path).read())
        for e in mine:
            print("  line", e["ts"], e["event"], e["dir"], e["pid"], e["comm"], e["lport"], e["rport"], e["payload"])
        print(open(log).read())
        print("FAIL summary", problems, "lost", lost)
    return not problems


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    sig = getattr(signal, sys.argv[2]) if len(sys.argv) > 2 else signal.SIGTERM
    bad = 0
    t0 = time.monotonic()
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            ok = one(tmp, sig)
        bad += not ok
        print(f"run {i}: {'ok' if ok else 'FAIL'} ({time.monotonic() - t0:.0f}s)", flush=True)
    print(f"stress_cli: {bad} of {runs} runs failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
