"""Peers for the connection tools' tests (tcpconnect, tcpaccept, tcpconnlat), each a process with a name of its own.

    python connpeers.py acceptor NAME FAMILY HOST N      listen, say "LISTEN <port>", accept N connections in a
                                                         second thread (its tid is not the pid), say "ACCEPTED
                                                         <peer port>" for each, close them
    python connpeers.py connector NAME FAMILY HOST PORT N [OPTIONS]
                                                         on a line on stdin, connect N times one after the other;
                                                         say "CONNECT <local port> <OK or errno name>" for each
        --uid UID        drop to this user id first (after naming the process)
        --syncnt N       TCP_SYNCNT: SYN retries before the kernel gives up (ETIMEDOUT)
        --timeout S      a connect timeout of the program's own (non-blocking connect, then close)
        --hold 1         keep every connected socket open until the end
        --v6socket 1     an AF_INET6 socket whatever FAMILY is (to an IPv4 HOST: a v4-mapped ::ffff:HOST)

Every process says "PID <name> <pid>" first; one write(2) per line.
"""
import ctypes
import errno
import os
import socket
import sys
import threading

PR_SET_NAME = 15


def say(line):
    os.write(1, f"{line}\n".encode())


def set_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
    say(f"PID {name} {os.getpid()}")


def family_of(f):
    return socket.AF_INET6 if f == "6" else socket.AF_INET


def acceptor(name, fam, host, n):
    set_name(name)
    ls = socket.socket(family_of(fam), socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(int(n) + 8)
    say(f"LISTEN {ls.getsockname()[1]}")

    def serve():
        for _ in range(int(n)):
            c, peer = ls.accept()
            say(f"ACCEPTED {peer[1]}")
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    t.join()
    ls.close()


def connector(name, fam, host, port, n, *opts):
    opts = dict(zip(opts[::2], opts[1::2]))
    set_name(name)
    if "--uid" in opts:
        os.setuid(int(opts["--uid"]))
    sys.stdin.readline()
    held = []
    for _ in range(int(n)):
        if "--v6socket" in opts:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            target = ("::ffff:" + host if ":" not in host else host, int(port))
        else:
            s = socket.socket(family_of(fam), socket.SOCK_STREAM)
            target = (host, int(port))
        if "--syncnt" in opts:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, int(opts["--syncnt"]))
        if "--timeout" in opts:
            s.settimeout(float(opts["--timeout"]))
        try:
            s.connect(target)
            result = "OK"
        except OSError as e:
            # the program's own timeout has no errno (since Python 3.10 the kernel's ETIMEDOUT is a
            # TimeoutError, socket.timeout, too)
            result = "TIMEOUT" if e.errno is None else errno.errorcode.get(e.errno, str(e.errno))
        say(f"CONNECT {s.getsockname()[1]} {result}")
        if "--hold" in opts and result == "OK":
            held.append(s)
        else:
            s.close()
    for s in held:
        s.close()


if __name__ == "__main__":
    {"acceptor": acceptor, "connector": connector}[sys.argv[1]](*sys.argv[2:])
