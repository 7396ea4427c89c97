"""Real TCP peers for the end-to-end tests, run as separate processes with names of their own.

    python peers.py server NAME FAMILY HOST PORT RECV SEND      accept one connection, read RECV, send SEND
    python peers.py client NAME FAMILY HOST PORT SEND RECV [DELAY]  connect, (wait DELAY s, or with DELAY "go"
                                                                say "CONNECTED <port>" and wait for a second line
                                                                on stdin,) send SEND, read RECV
    python peers.py mserver NAME FAMILY HOST PORT N RECV SEND   accept N connections, serve them all at once
    python peers.py mclient NAME FAMILY HOST PORT N SEND RECV   open N connections at once, each a client
    python peers.py preclient NAME FAMILY HOST PORT SEND RECV   connect at once; on "go" send SEND, read RECV
    python peers.py inetd NAME FAMILY HOST PORT HANDLER_NAME RECV SEND   accept, fork+exec a handler on fd 0
    python peers.py handler NAME RECV SEND                      (exec'd by inetd) I/O on fd 0
    python peers.py fdpass NAME FAMILY HOST PORT RECEIVER_NAME RECV SEND accept, pass the fd over a unix socket
    python peers.py abort NAME FAMILY HOST PORT                 connect, say CONNECTED; on "go" close with a RST
    python peers.py finish NAME FAMILY HOST PORT                accept one, say ACCEPTED; on "go" send a FIN and
                                                                wait for the peer's FIN or RST

Every process prints "PID <name> <pid>" and, for listeners, "LISTEN <port>" on stdout, one write per line.
"""
import array
import ctypes
import os
import socket
import struct
import sys
import threading
import time

PR_SET_NAME = 15


def say(line):
    """One whole line in one write(2): a forked child shares the pipe, and print() under PYTHONUNBUFFERED
    writes the text and its newline separately, so lines could interleave ("LISTEN 35153PID trecv ...")."""
    os.write(1, f"{line}\n".encode())


def set_name(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
    say(f"PID {name} {os.getpid()}")


def family_of(f):
    return socket.AF_INET6 if f == "6" else socket.AF_INET


def recv_exactly(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            break
        got += len(chunk)
    return got


def send_all(sock, n):
    block = b"x" * 65536
    left = n
    while left > 0:
        left -= sock.send(block[:min(left, len(block))])


def listener(fam, host, port, backlog=16):
    s = socket.socket(family_of(fam), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(backlog)
    say(f"LISTEN {s.getsockname()[1]}")
    return s


def wait_go():
    """Block until the test writes a line on stdin (so it can start tracing first)."""
    sys.stdin.readline()


def server(name, fam, host, port, nrecv, nsend):
    set_name(name)
    ls = listener(fam, host, port)
    c, _ = ls.accept()
    serve_one(c, nrecv, nsend)
    ls.close()


def client(name, fam, host, port, nsend, nrecv, delay="0"):
    set_name(name)
    wait_go()
    c = socket.create_connection((host, int(port)))
    if delay == "go":                 # the test says when: e.g. once an inetd-style server has handed it over
        say(f"CONNECTED {c.getsockname()[1]}")
        wait_go()
    elif float(delay):
        time.sleep(float(delay))
    send_all(c, int(nsend))
    recv_exactly(c, int(nrecv))
    c.close()


def serve_one(c, nrecv, nsend):
    recv_exactly(c, int(nrecv))
    send_all(c, int(nsend))
    c.shutdown(socket.SHUT_WR)
    recv_exactly(c, 1)   # wait for the peer's FIN
    c.close()


def run_all(target, argsets):
    """Run target(*args) for every args in a thread of its own (they inherit the task name); wait for all."""
    errors = []

    def run(*args):
        try:
            target(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the exit status
            errors.append(e)

    threads = [threading.Thread(target=run, args=a) for a in argsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def mserver(name, fam, host, port, n, nrecv, nsend):
    set_name(name)
    ls = listener(fam, host, port, backlog=int(n))    # all N at once: a full queue would drop SYNs
    conns = []
    for _ in range(int(n)):
        conns.append(ls.accept()[0])
    ls.close()
    run_all(serve_one, [(c, nrecv, nsend) for c in conns])


def mclient(name, fam, host, port, n, nsend, nrecv):
    set_name(name)
    wait_go()
    conns = [socket.create_connection((host, int(port))) for _ in range(int(n))]

    def one(c):
        send_all(c, int(nsend))
        recv_exactly(c, int(nrecv))
        c.close()

    run_all(one, [(c,) for c in conns])


def preclient(name, fam, host, port, nsend, nrecv):
    """A client whose connection is open before the test traces it: connect at once, then send on "go"."""
    set_name(name)
    c = socket.create_connection((host, int(port)))
    say(f"CONNECTED {c.getsockname()[1]}")
    wait_go()
    send_all(c, int(nsend))
    recv_exactly(c, int(nrecv))
    c.close()


def inetd(name, fam, host, port, handler_name, nrecv, nsend):
    set_name(name)
    ls = listener(fam, host, port)
    c, _ = ls.accept()
    pid = os.fork()
    if pid == 0:
        os.dup2(c.fileno(), 0)
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "handler", handler_name, nrecv, nsend])
    c.close()
    ls.close()
    os.waitpid(pid, 0)


def handler(name, nrecv, nsend):
    set_name(name)
    c = socket.socket(fileno=0)
    recv_exactly(c, int(nrecv))
    send_all(c, int(nsend))
    c.shutdown(socket.SHUT_WR)
    recv_exactly(c, 1)
    c.close()


def fdpass(name, fam, host, port, receiver_name, nrecv, nsend):
    set_name(name)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the receiver: gets the connection over the unix socket and does all the I/O
        a.close()
        set_name(receiver_name)
        msg, anc, _flags, _addr = b.recvmsg(1, socket.CMSG_LEN(4))
        fds = array.array("i")
        fds.frombytes(anc[0][2][:4])
        c = socket.socket(fileno=fds[0])
        recv_exactly(c, int(nrecv))
        send_all(c, int(nsend))
        c.shutdown(socket.SHUT_WR)
        recv_exactly(c, 1)
        c.close()
        os._exit(0)
    b.close()
    ls = listener(fam, host, port)
    c, _ = ls.accept()
    a.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [c.fileno()]))])
    c.close()
    ls.close()
    os.waitpid(pid, 0)


def abort(name, fam, host, port):
    """SO_LINGER 0: close() sends a RST instead of a FIN and the socket is gone at once, no TIME_WAIT."""
    set_name(name)
    c = socket.create_connection((host, int(port)))
    say(f"CONNECTED {c.getsockname()[1]}")
    wait_go()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def finish(name, fam, host, port):
    set_name(name)
    ls = listener(fam, host, port)
    c, _ = ls.accept()
    say("ACCEPTED")
    wait_go()
    c.shutdown(socket.SHUT_WR)
    try:
        c.recv(1)
    except ConnectionResetError:
        pass
    c.close()
    ls.close()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"server": server, "client": client, "inetd": inetd, "handler": handler, "fdpass": fdpass, "mserver": mserver,
     "mclient": mclient, "preclient": preclient, "abort": abort, "finish": finish}[mode](*args)
