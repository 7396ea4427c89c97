"""`pytracer [TOOL] [OPTIONS]`: one command, the tools (pytracer/tools/) as subcommands. Without a tool
name it runs tcpsnoop, so `python -m pytracer` and every tcpsnoop flag work as before.
`pytracer --list` (or `pytracer help`) names the tools; `pytracer TOOL --help` tells a tool's options."""
import sys

from . import tools


def list_tools(out=None):
    out = out or sys.stdout
    print("pytracer TOOL [OPTIONS]  (default tool: %s)\n\ntools:" % tools.DEFAULT, file=out)
    for name in tools.names():
        print(f"  {name:<12} {tools.summary(name)}", file=out)
    print("\n`pytracer TOOL --help` shows a tool's options.", file=out)


def run(argv=None):
    """Pick the tool from the first argument (tcpsnoop when it names none) and run it: its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--list", "help", "list"):
        list_tools()
        return 0
    name = tools.DEFAULT
    if argv and tools.exists(argv[0]):
        name = argv.pop(0)
    return tools.front_end(name).run(argv)


def main():
    from .toolkit.cli import main as tool_main

    tool_main(run)
