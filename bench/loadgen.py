"""Python stand-in for loadgen.c (same command line and output), used where no C compiler exists.
It is far slower than the C version; results say which one ran."""
import os
import socket
import sys
import threading
import time


def serve(ls, sink, resp):
    payload = b"x" * resp
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            continue
        with c:
            try:
                if sink:
                    while c.recv(65536):
                        pass
                elif c.recv(65536):
                    c.sendall(payload)
                    while c.recv(65536):
                        pass
            except OSError:
                pass


def server(port, sink, resp=0, threads=16):
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind(("::", port))
    ls.listen(4096)
    for _ in range(threads):
        threading.Thread(target=serve, args=(ls, sink, resp), daemon=True).start()
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def recv_n(s, n):
    while n > 0:
        b = s.recv(min(n, 65536))
        if not b:
            raise OSError("eof")
        n -= len(b)


def clients(fn, conc, seconds, rate):
    counts = []
    t0 = time.monotonic()
    end = t0 + seconds
    interval = conc / rate if rate > 0 else 0.0
    threads = [threading.Thread(target=fn, args=(i, t0 + interval * i / conc, interval, end, counts))
               for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = sum(c for c, _ in counts)
    e = sum(e for _, e in counts)
    print("done %d elapsed_s %.6f errors %d" % (n, time.monotonic() - t0, e), flush=True)


def main(argv):
    mode = argv[1]
    if mode == "server":
        server(int(argv[2]), False, int(argv[3]))
    elif mode == "sink":
        server(int(argv[2]), True)
    elif mode == "client":
        host, port, conc, seconds, rate, req, resp = argv[2], int(argv[3]), int(argv[4]), float(argv[5]), \
            float(argv[6]), int(argv[7]), int(argv[8])
        payload = b"x" * req
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET

        def one(i, nxt, interval, end, counts):
            n = e = 0
            while True:
                if interval:
                    d = nxt - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    nxt += interval
                if time.monotonic() >= end:
                    break
                try:
                    with socket.socket(fam, socket.SOCK_STREAM) as s:
                        s.connect((host, port))
                        s.sendall(payload)
                        recv_n(s, resp)
                    n += 1
                except OSError:
                    e += 1
            counts.append((n, e))

        clients(one, conc, seconds, rate)
    elif mode == "stream":
        host, port, conc, seconds, rate, msg = argv[2], int(argv[3]), int(argv[4]), float(argv[5]), \
            float(argv[6]), int(argv[7])
        payload = b"x" * msg
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET

        def one(i, nxt, interval, end, counts):
            n = e = 0
            with socket.create_connection((host, port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    if interval:
                        d = nxt - time.monotonic()
                        if d > 0:
                            time.sleep(d)
                        nxt += interval * 32
                    if time.monotonic() >= end:
                        break
                    for _ in range(32):
                        s.sendall(payload)
                        n += 1
            counts.append((n, e))

        clients(one, conc, seconds, rate)
    elif mode == "producer":
        seconds, rate = float(argv[2]), float(argv[3])
        sys.stdin.readline()
        t0 = time.monotonic()
        end, nxt, n = t0 + seconds, t0, 0
        step = 256 / rate if rate > 0 else 0.0
        getppid = os.getppid
        while True:
            if step:
                d = nxt - time.monotonic()
                if d > 0:
                    time.sleep(d)
                nxt += step
            if time.monotonic() >= end:
                break
            for _ in range(256):
                getppid()
            n += 256
        print("done %d elapsed_s %.6f errors 0" % (n, time.monotonic() - t0), flush=True)
    else:
        sys.exit("usage: see loadgen.c")


if __name__ == "__main__":
    main(sys.argv)
