import signal
import sys

# Before anything else is imported: a SIGTERM during start-up ends the process quietly (nothing is in the
# kernel yet); cli.run() installs the handler that also cleans up once there is something to clean.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

from .cli import main  # noqa: E402

main()
