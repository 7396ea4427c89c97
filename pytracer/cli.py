"""Compatibility: for now `pytracer` is tcpsnoop's front end, pytracer/tools/tcpsnoop/cli.py (this name
gives that very module)."""
import sys

from .tools.tcpsnoop import cli

sys.modules[__name__] = cli
