"""pytracer tcpretrans on the real kernel: retransmissions caused on purpose by nftables drop rules inside a
pair of network namespaces, whose counters say exactly how many packets were dropped; the tool must report
each retransmission with the connection's tuple and state, and -c must count them."""
import json
import time

import pytest

import traffic
from conftest import start_tool, stop_tool
from netlab import NetnsPair

PAYLOAD = 300           # one small segment: IP packet > 200 bytes, a pure ACK < 100
REPLY = 10             # the client waits for it: no FIN of its own while its data is being dropped


@pytest.fixture
def pair(kernel):
    with NetnsPair() as p:
        yield p


def start_tracer(*args):
    return start_tool("tcpretrans", *args)


def stop_tracer(p):
    """SIGTERM (the tool drains what it read and exits 0); its JSON lines and stderr."""
    out, err = stop_tool(p)
    if "-j" not in p.args:
        return out.splitlines(), err
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()], err


def add_drop(pair, ns, match):
    """A drop rule with a named counter in namespace `ns`'s input hook."""
    pair.nft(ns, f"""table inet pytr {{
    counter drops {{ }}
    chain input {{ type filter hook input priority 0; policy accept;
        {match} counter name drops drop
    }}
}}""")


def remove_drop(pair, ns):
    """Delete the rule; how many packets it dropped."""
    pair.nft(ns, "delete chain inet pytr input")
    return pair.counter(ns, "drops")


def wait_drops(pair, ns, n, timeout=30.0):
    """Until the drop rule in `ns` has dropped `n` packets (by the clock it would be a guess on a loaded
    machine, where a peer may take long to wake up)."""
    deadline = time.monotonic() + timeout
    while pair.counter(ns, "drops") < n:
        assert time.monotonic() < deadline, f"fewer than {n} packets dropped in {timeout} s"
        time.sleep(0.02)


def one_segment_conversation(pair, family, tracer_args=("-j",), min_drops=3, reply=REPLY):
    """The client connects, then a data segment it sends is dropped until `min_drops` were (the original,
    the tail loss probe, RTO retransmissions), then delivered. The tracer's JSON lines, the connection
    (client port, server port, client pid, client address, server address) and the number dropped."""
    fam = str(family)
    srv_addr, cli_addr = pair.addr[family][1], pair.addr[family][0]
    s = traffic.server("rtsrv", fam, srv_addr, PAYLOAD, reply, netns=pair.b)
    tracer = c = None
    try:
        tracer = start_tracer("-P", str(s.port), *tracer_args)
        c = traffic.client("rtcli", fam, srv_addr, s.port, PAYLOAD, reply, netns=pair.a, delay="go")
        c.go()
        cport = int(c.read_until("CONNECTED")[1])
        add_drop(pair, pair.b, f"meta nfproto ipv{family} tcp dport {s.port} meta length > 200")
        c.go()
        wait_drops(pair, pair.b, min_drops)
        drops = remove_drop(pair, pair.b)
        c.wait(timeout=30)
        s.wait(timeout=30)
        time.sleep(0.3)
        lines, err = stop_tracer(tracer)
        tracer = None
        return lines, (cport, s.port, c.pids["rtcli"], cli_addr, srv_addr), drops
    finally:
        for peer in (c, s):
            if peer is not None and peer.p.poll() is None:
                peer.p.kill()
                peer.p.wait()
        if tracer is not None:
            stop_tracer(tracer)


def ours(lines, cport, sport):
    return [e for e in lines if e.get("lport") == cport and e.get("rport") == sport]


@pytest.mark.parametrize("family", [4, 6])
def test_dropped_segment_retransmissions(pair, family):
    """A data segment dropped three times: the original, the tail loss probe (type tlp with -l, from the
    loss probe timer) and the RTO retransmissions before the rule goes were dropped; each dropped one was
    retransmitted once, so the lines equal the drops. All ran from timers: no pid."""
    lines, (cport, sport, cpid, caddr, saddr), drops = one_segment_conversation(pair, family, ["-j", "-l"])
    mine = ours(lines, cport, sport)
    assert drops >= 3, f"expected the original, the probe and an RTO retransmission dropped, got {drops}: {mine}"
    assert len(mine) == drops, (drops, mine)
    assert [e["type"] for e in mine] == ["tlp"] + ["retrans"] * (drops - 1)
    assert {(e["family"], e["laddr"], e["raddr"], e["state"]) for e in mine} == {(family, caddr, saddr,
                                                                                  "ESTABLISHED")}
    assert all(e["pid"] is None and e["comm"] is None for e in mine), mine
    assert not [e for e in lines if e.get("event") == "lost"]


def test_without_l_the_probe_is_a_retransmission(pair):
    lines, (cport, sport, *_), drops = one_segment_conversation(pair, 4)
    mine = ours(lines, cport, sport)
    assert len(mine) == drops and {e["type"] for e in mine} == {"retrans"}


def test_retransmission_in_the_owners_context_names_it(pair):
    """The client closes right after its data segment (dropped): its FIN arrives out of order, the server's
    SACK comes back over veth while close() holds the client's socket lock, and the fast retransmission
    runs in the client's own context, from the backlog close() processes: that line is named after it.
    The later ones run from the RTO timer: no pid."""
    lines, (cport, sport, cpid, *_), drops = one_segment_conversation(pair, 4, reply=0)
    mine = ours(lines, cport, sport)
    assert len(mine) == drops
    named = [e for e in mine if e["pid"] is not None]
    assert named and all((e["pid"], e["comm"]) == (cpid, "rtcli") for e in named), mine
    assert mine[0] in named and mine[0]["state"] == "FIN_WAIT1"


def test_count_per_connection(pair):
    lines, (cport, sport, cpid, caddr, saddr), drops = one_segment_conversation(pair, 6, ["-j", "-c"])
    mine = ours(lines, cport, sport)
    assert mine == [{"family": 6, "laddr": caddr, "lport": cport, "raddr": saddr, "rport": sport,
                     "type": "retrans", "count": drops}]


def test_columns(pair):
    lines, (cport, sport, cpid, caddr, saddr), drops = one_segment_conversation(pair, 6, ["-l"])
    assert lines[0].split() == ["TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE"]
    mine = [ln.split() for ln in lines[1:] if f"[{caddr}]:{cport}" in ln]
    assert len(mine) == drops
    # no PID (timer context): TIME IP LADDR:LPORT T> RADDR:RPORT STATE
    assert [m[1:] for m in mine] == [["6", f"[{caddr}]:{cport}", t + ">", f"[{saddr}]:{sport}", "ESTABLISHED"]
                                     for t in ["L"] + ["R"] * (drops - 1)]
    assert all(len(m[0]) == 8 and m[0].count(":") == 2 for m in mine)     # HH:MM:SS


def test_synack_and_syn_retransmissions(pair):
    """The first two SYN-ACKs dropped in the client's namespace: the server retransmits them (type synack,
    state NEW_SYN_RECV: a request socket) and the client its SYN (SYN_SENT). Counters before the drop rule
    count every SYN-ACK that arrived and every SYN the server got: all but the first of each were
    retransmissions."""
    srv_addr, cli_addr = pair.addr[4][1], pair.addr[4][0]
    s = traffic.server("rtsrv", "4", srv_addr, PAYLOAD, REPLY, netns=pair.b)
    tracer = c = None
    try:
        pair.nft(pair.a, f"""table inet pytr {{
    counter synacks {{ }}
    counter drops {{ }}
    chain count {{ type filter hook input priority -10; policy accept;
        tcp sport {s.port} tcp flags & (syn | ack) == syn | ack counter name synacks
    }}
    chain input {{ type filter hook input priority 0; policy accept;
        tcp sport {s.port} tcp flags & (syn | ack) == syn | ack counter name drops drop
    }}
}}""")
        pair.nft(pair.b, f"""table inet pytr {{
    counter syns {{ }}
    chain input {{ type filter hook input priority 0; policy accept;
        tcp dport {s.port} tcp flags & (syn | ack) == syn counter name syns
    }}
}}""")
        tracer = start_tracer("-j", "-P", str(s.port))
        c = traffic.client("rtcli", "4", srv_addr, s.port, PAYLOAD, REPLY, netns=pair.a)
        c.go()
        wait_drops(pair, pair.a, 2)
        drops = remove_drop(pair, pair.a)
        c.wait(timeout=30)
        s.wait(timeout=30)
        synacks, syns = pair.counter(pair.a, "synacks"), pair.counter(pair.b, "syns")
        time.sleep(0.3)
        lines, err = stop_tracer(tracer)
        tracer = None
    finally:
        for peer in (c, s):
            if peer is not None and peer.p.poll() is None:
                peer.p.kill()
                peer.p.wait()
        if tracer is not None:
            stop_tracer(tracer)
    synack_lines = [e for e in lines if e.get("type") == "synack" and e["lport"] == s.port]
    syn_lines = [e for e in lines if e.get("type") == "retrans" and e["rport"] == s.port
                 and e["laddr"] == cli_addr]
    # every SYN-ACK that arrived was counted, the dropped ones and those after the rule went (one, or two
    # when the server's timer and the client's SYN retransmission crossed)
    assert drops >= 2 and synacks > drops, (drops, synacks)
    assert len(synack_lines) == synacks - 1 >= drops
    assert {(e["laddr"], e["raddr"], e["state"], e["pid"]) for e in synack_lines} == {(srv_addr, cli_addr,
                                                                                       "NEW_SYN_RECV", None)}
    assert syns >= 2 and len(syn_lines) == syns - 1
    assert {(e["raddr"], e["state"], e["pid"]) for e in syn_lines} == {(srv_addr, "SYN_SENT", None)}
