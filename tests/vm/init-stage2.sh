#!/run/vmtest/bin/busybox sh
# vmtest guest init, stage 2.  Runs as PID 1 on the overlay root (host root
# read-only + tmpfs upper) after stage 1 mounted the kernel filesystems and
# brought up loopback.  Interpreted by the busybox that stage 1 copied to
# /run/vmtest/bin (exec'ing host binaries is slow under TCG).
#
# Runs /run/vmtest/cmd (written by the host: cd to the repo, then exec the
# command under `env -i` with the caller's environment), streams its output
# to ttyS1 (the host's stdout), reports "start <uptime> <uname -r>" and
# "exit <status> <uptime>" on ttyS2 (a file on the host), and powers off.

BB=/run/vmtest/bin/busybox
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

uptime_s() { read -r u _ </proc/uptime; echo "$u"; }
say() { echo "[$(uptime_s)] vmtest-init2: $*" >/dev/console; }
report() { echo "$*" >/dev/ttyS2; }

power_off() {
	# sysrq 'o' powers off at once (qemu then exits); else busybox's
	# forced poweroff; else exiting panics PID 1, and panic=-1 together with
	# qemu -no-reboot ends the VM too.
	echo o >/proc/sysrq-trigger 2>/dev/null
	$BB sleep 2
	$BB poweroff -f 2>/dev/null
	$BB sleep 5
	exit 1
}

[ -r /run/vmtest/cmd ] || {
	say "FATAL: /run/vmtest/cmd missing"
	report "exit 125 init2"
	power_off
}
. /run/vmtest/config

ulimit -l unlimited 2>/dev/null
ulimit -n 65536 2>/dev/null
out=/dev/ttyS1

say "running the command"
# The guest's own `uname -r`, for the host's summary line.
read -r release </proc/sys/kernel/osrelease
report "start $(uptime_s) $release"
if [ "${VMTEST_TTY:-0}" = 1 ]; then
	# The host's stdout is a terminal: give the command the serial tty.
	$BB sh /run/vmtest/cmd </dev/null >$out 2>&1
	rc=$?
else
	# The host's stdout is a pipe or file: keep it that way for the command
	# (no colours, block buffering), relaying through a fifo.
	$BB mkfifo /run/vmtest/out
	$BB cat /run/vmtest/out >$out &
	catpid=$!
	$BB sh /run/vmtest/cmd </dev/null >/run/vmtest/out 2>&1
	rc=$?
	# Processes the command left behind may still hold the fifo open:
	# give them a moment, then kill everything but us and the relay.
	n=0
	while kill -0 $catpid 2>/dev/null && [ $n -lt 10 ]; do
		$BB sleep 0.2
		n=$((n + 1))
	done
	if kill -0 $catpid 2>/dev/null; then
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			[ "$p" = 1 ] || [ "$p" = "$catpid" ] || kill -KILL "$p" 2>/dev/null
		done
	fi
	wait $catpid
fi
# Closing a serial tty waits until its output has drained: do that before
# reporting the status, so the host has all the output first.
exec 3>$out
exec 3>&-
say "command exited with status $rc"
report "exit $rc $(uptime_s)"
power_off
