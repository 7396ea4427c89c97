"""The layers of docs/architecture.md, enforced on the source (no kernel needed), and its worked example
(the tcpstates tool) checked against the files and run on the real kernel."""
import ast
import os
import re
import socket
import subprocess
import time

from conftest import ROOT, pytracer_cmd, run_env, without_notes

PKG = os.path.join(ROOT, "pytracer")
# object parsing, BTF/CO-RE and what they share: pure, no system call
PARSING = {"abi", "uapi", "errors", "spec", "btf", "elf", "core", "records", "cache"}
SYSCALL = {"syscall"}                   # the only ctypes user
KERNEL = {"maps", "program", "attach", "iterator", "ringbuf", "loader", "inventory", "features",
          "kernel_report", "resources",
          "bpf"}     # bpf: the package that holds the tools' compiled objects (package data)
ENGINE = PARSING | SYSCALL | KERNEL
ENTRY = {"", "__main__", "cli", "tcpsnoop"}   # the command, and the compatibility alias of the tcpsnoop API


def _modules():
    """{module name relative to pytracer ("" for the package, "toolkit.cli", ...): set of what it imports
    (relative to pytracer, or "ctypes"), function-level imports included}."""
    out = {}
    for dirpath, _dirs, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), PKG)[:-3].replace(os.sep, ".")
            mod = rel[:-len("__init__")].rstrip(".") if rel.endswith("__init__") else rel
            pkg = mod if f == "__init__.py" else mod.rpartition(".")[0]
            deps = set()
            with open(os.path.join(dirpath, f)) as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level:
                    base = pkg.split(".") if pkg else []
                    base = base[:len(base) - node.level + 1]
                    if node.module:
                        names = [".".join(["pytracer"] + base + [node.module])]
                    else:
                        names = [".".join(["pytracer"] + base + [a.name]) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module]
                for n in names:
                    if n == "ctypes" or n.startswith("ctypes."):
                        deps.add("ctypes")
                    elif n == "pytracer" or n.startswith("pytracer."):
                        deps.add(n[len("pytracer."):] if n != "pytracer" else "")
            out[mod] = deps
    return out


MODULES = _modules()


def _top(dep):
    return dep.split(".")[0]


def _is(dep, layer):
    return _top(dep) in layer or dep in layer


def test_every_module_has_a_layer():
    for mod in MODULES:
        assert (mod in ENGINE or mod in ENTRY or mod.startswith(("toolkit", "tools"))), \
            f"pytracer/{mod.replace('.', '/')}.py belongs to no layer of docs/architecture.md (add it here)"


def test_parsing_never_imports_the_syscall_layer():
    for mod in PARSING:
        bad = {d for d in MODULES[mod] if d and not _is(d, PARSING) and d != "__version__"}
        assert not bad, f"pytracer.{mod} (parsing) imports {sorted(bad)}"


def test_only_the_syscall_layer_uses_ctypes():
    assert {m for m, deps in MODULES.items() if "ctypes" in deps} == SYSCALL


def test_the_engine_never_imports_the_toolkit_or_a_tool():
    for mod in ENGINE:
        bad = {d for d in MODULES[mod] if _top(d) in ("toolkit", "tools") or d in ENTRY - {""}}
        assert not bad, f"pytracer.{mod} (engine) imports {sorted(bad)}"


def test_the_toolkit_never_imports_a_tool():
    for mod, deps in MODULES.items():
        if mod.startswith("toolkit"):
            bad = {d for d in deps if _top(d) == "tools" or d in ENTRY - {""}}
            assert not bad, f"pytracer.{mod} imports {sorted(bad)}"


def test_tools_never_import_each_other():
    for mod, deps in MODULES.items():
        if mod.startswith("tools."):
            tool = mod.split(".")[1]
            bad = {d for d in deps if d.startswith("tools.") and d.split(".")[1] != tool}
            assert not bad, f"pytracer.{mod} imports another tool: {sorted(bad)}"


# --- the worked example ---------------------------------------------------------------------------------
EXAMPLE = ("bpf_bytecode/tcpstates.h", "bpf_bytecode/tcpstates.bpf.c", "pytracer/tools/tcpstates/cli.py")


def test_the_worked_example_is_the_shipped_tool():
    """docs/architecture.md shows the tool's files whole, as they are."""
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        doc = f.read()
    for path in EXAMPLE:
        m = re.search(r"<!-- file: %s -->\n```[a-z]*\n(.*?)```" % re.escape(path), doc, re.S)
        assert m, f"docs/architecture.md does not show {path}"
        with open(os.path.join(ROOT, path)) as f:
            assert m.group(1) == f.read(), f"docs/architecture.md shows an outdated {path}"


def test_the_example_tool_touches_no_engine_module():
    deps = set().union(*(d for m, d in MODULES.items() if m.startswith("tools.tcpstates")))
    assert not {d for d in deps if _is(d, KERNEL | SYSCALL)}, deps


def test_list_names_the_tools():
    r = subprocess.run(pytracer_cmd("--list"), capture_output=True, text=True, env=run_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  tcpsnoop ", r.stdout, re.M) and re.search(r"^  tcpstates ", r.stdout, re.M), r.stdout
    h = subprocess.run(pytracer_cmd("help"), capture_output=True, text=True, env=run_env(), timeout=60)
    assert h.stdout == r.stdout


def test_tcpstates_prints_a_connections_states(kernel):
    """The example tool on the real kernel: a loopback connection's life, in order, on one port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    p = subprocess.Popen(pytracer_cmd("tcpstates", "-P", str(port), "-d", "6"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=run_env())
    try:
        assert p.stdout.readline().split()[:2] == ["PID", "COMM"]          # the header: attached
        time.sleep(0.3)
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        c.close()
        a.close()
        out, err = p.communicate(timeout=30)
    finally:
        srv.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    rows = [ln.split() for ln in out.splitlines()]                # (the header was read above)
    client = [r[-3:] for r in rows if r[5] == str(port)]          # RPORT: the connecting side
    server = [r[-3:] for r in rows if r[3] == str(port)]          # LPORT: the listener and its child
    for want in (["CLOSE", "->", "SYN_SENT"], ["SYN_SENT", "->", "ESTABLISHED"], ["ESTABLISHED", "->", "FIN_WAIT1"]):
        assert want in client, out
    for want in (["LISTEN", "->", "SYN_RECV"], ["SYN_RECV", "->", "ESTABLISHED"]):
        assert want in server, out
    assert not without_notes(err), err
