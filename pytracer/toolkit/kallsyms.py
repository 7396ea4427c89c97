"""Kernel addresses as symbol+offset, from /proc/kallsyms, for the kernel stacks tools print. Reading and
parsing it (some 120,000 symbols) takes a few tenths of a second: `load_in_background()` does it while the
tool loads and attaches its programs, and the first lookup waits for it. The kernel shows real addresses to
root only (kptr_restrict): where it shows zeros, addresses stay hex."""
import bisect
import re
import threading

# text symbols (where code returns to): "ffffffff81000000 T _stext" or "... t name\t[module]"
_TEXT = re.compile(r"^([0-9a-f]+) [tTwW] (\S+)(?:\t\[(\S+)\])?$", re.M)


class Kallsyms:
    def __init__(self, path="/proc/kallsyms"):
        self.path = path
        self._addrs = None
        self._names = None
        self._thread = None

    def load(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError:
            text = ""
        pairs = sorted((int(a, 16), f"{{}} [{mod}]" if mod else "{}", name)
                       for a, name, mod in _TEXT.findall(text) if int(a, 16))
        self._names = [(fmt, name) for _, fmt, name in pairs]
        self._addrs = [a for a, _, _ in pairs]     # last: symbol() takes a set _addrs for a finished load

    def load_in_background(self):
        self._thread = threading.Thread(target=self.load, name="kallsyms", daemon=True)
        self._thread.start()

    def symbol(self, addr: int) -> str:
        """"name+0xoff" ("name+0xoff [module]") for a kernel text address, or its hex if none is known."""
        if self._addrs is None:
            if self._thread is not None:
                self._thread.join()
            if self._addrs is None:
                self.load()
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return f"{addr:#x}"
        fmt, name = self._names[i]
        return fmt.format(f"{name}+{addr - self._addrs[i]:#x}")
