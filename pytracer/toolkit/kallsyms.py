"""Kernel addresses as symbol+offset, from /proc/kallsyms, for the kernel stacks tools print. Read once, on
first use (some 200,000 lines); the kernel shows real addresses to root only (kptr_restrict): where it
shows zeros, addresses stay hex."""
import bisect


class Kallsyms:
    def __init__(self, path="/proc/kallsyms"):
        self.path = path
        self._addrs = None
        self._names = None

    def load(self):
        pairs = []
        try:
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in "tTwW":     # text symbols: where code returns to
                        continue
                    addr = int(parts[0], 16)
                    if addr:
                        pairs.append((addr, parts[2] if len(parts) == 3 else (parts[2], parts[3])))  # [module]
        except OSError:
            pass
        pairs.sort()
        self._addrs = [a for a, _ in pairs]
        self._names = [n for _, n in pairs]

    def symbol(self, addr: int) -> str:
        """"name+0xoff" ("name+0xoff [module]") for a kernel text address, or its hex if none is known."""
        if self._addrs is None:
            self.load()
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return f"{addr:#x}"
        name = self._names[i]
        if isinstance(name, tuple):
            return f"{name[0]}+{addr - self._addrs[i]:#x} {name[1]}"
        return f"{name}+{addr - self._addrs[i]:#x}"
