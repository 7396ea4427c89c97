"""Compatibility: the tracer lives in pytracer/tools/tcpsnoop/tracer.py; `import pytracer.tcpsnoop` (and
`from pytracer.tcpsnoop import TcpSnoop`, as README documents) gives that very module."""
import sys

from .tools.tcpsnoop import tracer

sys.modules[__name__] = tracer
