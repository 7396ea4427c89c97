"""Which peer tools run on this machine, and the error of those that do not (kprobes, kernel headers).

Each tool is started for a few seconds; one still running then works (it is stopped with Ctrl-C); one that
exited is recorded with its exit status and the last lines it printed.

    python bench/peers_status.py [--seconds S]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PEERS = [
    ("libbpf-tools", "/usr/sbin/tcpstates"), ("libbpf-tools", "/usr/sbin/tcplife"),
    ("libbpf-tools", "/usr/sbin/tcpconnect"), ("libbpf-tools", "/usr/sbin/tcptracer"),
    ("libbpf-tools", "/usr/sbin/tcptop"),
    ("bpfcc-tools", "/usr/sbin/tcpstates-bpfcc"), ("bpfcc-tools", "/usr/sbin/tcplife-bpfcc"),
    ("bpfcc-tools", "/usr/sbin/tcpconnect-bpfcc"), ("bpfcc-tools", "/usr/sbin/tcptracer-bpfcc"),
    ("bpfcc-tools", "/usr/sbin/tcptop-bpfcc"),
    ("bpftrace", "bpftrace " + common.BPFTRACE_SCRIPT),
]


def probe(argv, seconds):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, preexec_fn=common.default_signals)
    try:
        out, _ = p.communicate(timeout=seconds)
        status = "fails"
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        status = "runs"
    text = out.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # the diagnostic: libbpf's / bcc's own message, not the Python traceback frames
    keep = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "b = BPF", "~", "raise "))]
    return {"status": status, "rc": p.returncode, "seconds": round(time.monotonic() - t0, 2),
            "error": " | ".join(keep[-3:]) if status == "fails" else None}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--only", help="comma-separated tool names (basename)")
    a = ap.parse_args(argv)
    common.need_root()
    res = {}
    only = set(a.only.split(",")) if a.only else None
    for pkg, cmd in PEERS:
        argv_ = cmd.split()
        name = os.path.basename(argv_[0]) + (" (our script)" if argv_[0] == "bpftrace" else "")
        if only and os.path.basename(argv_[0]) not in only:
            continue
        exe = argv_[0]
        if not (os.path.exists(exe) if os.path.isabs(exe) else shutil.which(exe)):
            res[name] = {"package": pkg, "status": "missing", "error": f"{exe} not installed"}
            continue
        r = probe(argv_, a.seconds)
        r["package"] = pkg
        r["version"] = common.pkg_version(pkg)
        res[name] = r
        common.log(f"peer {name}: {r['status']} {r['error'] or ''}")
    common.emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
