"""Two network namespaces joined by a veth pair, with addresses of their own (random, so that tests running
at the same time on the machine never share a tuple: the tracers see every namespace), and nftables rules in
them whose named counters say exactly how many packets a rule matched (dropped)."""
import json
import random
import shutil
import subprocess
import uuid

from conftest import kernel_unavailable


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class NetnsPair:
    """Namespaces `a` (the client's) and `b` (the server's); `addr[family][0]` is a's address, `[1]` b's."""

    def __init__(self):
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                kernel_unavailable(f"{tool} is not installed")
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"ptrA{tag}", f"ptrB{tag}"
        self.va, self.vb = f"pra{tag}", f"prb{tag}"
        x, y = random.randrange(1, 255), random.randrange(0, 64) * 4
        self.addr = {4: (f"10.{random.randrange(128, 250)}.{x}.{y + 1}", None),
                     6: (f"fd{random.randrange(0x10, 0xff):02x}:{random.randrange(1, 0xffff):x}::1",
                         None)}
        a4 = self.addr[4][0]
        self.addr[4] = (a4, a4.rsplit(".", 1)[0] + f".{y + 2}")
        a6 = self.addr[6][0]
        self.addr[6] = (a6, a6[:-1] + "2")

    def __enter__(self):
        cmds = [["ip", "netns", "add", self.a], ["ip", "netns", "add", self.b],
                ["ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name", self.vb,
                 "netns", self.b],
                ["ip", "-n", self.a, "addr", "add", f"{self.addr[4][0]}/30", "dev", self.va],
                ["ip", "-n", self.b, "addr", "add", f"{self.addr[4][1]}/30", "dev", self.vb],
                ["ip", "-n", self.a, "addr", "add", f"{self.addr[6][0]}/64", "dev", self.va, "nodad"],
                ["ip", "-n", self.b, "addr", "add", f"{self.addr[6][1]}/64", "dev", self.vb, "nodad"],
                ["ip", "-n", self.a, "link", "set", self.va, "up"], ["ip", "-n", self.b, "link", "set", self.vb, "up"],
                ["ip", "-n", self.a, "link", "set", "lo", "up"], ["ip", "-n", self.b, "link", "set", "lo", "up"]]
        try:
            for cmd in cmds:
                r = run(cmd, check=False)
                if r.returncode:
                    kernel_unavailable(f"cannot set up network namespaces: {' '.join(cmd)}: {r.stderr.strip()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):
            run(["ip", "netns", "del", ns], check=False)

    def nft(self, ns, script):
        """Run an nft script (one command per line) in namespace `ns`."""
        run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script)

    def counter(self, ns, name, table="pytr", family="inet"):
        """Packets the named counter has counted."""
        out = run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", family, table, name]).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return item["counter"]["packets"]
        raise AssertionError(f"no counter {name} in {out}")

    def exec_cmd(self, ns):
        return ["ip", "netns", "exec", ns]
