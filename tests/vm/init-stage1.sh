#!/bin/busybox sh
# vmtest guest init, stage 1.  Runs as PID 1 from the initramfs that
# tests/vm/vmtest builds (busybox-static + a few kernel modules + this file).
#
# Job: load the virtio / virtiofs-or-9p / overlay modules, mount the host's
# root filesystem read-only, put a tmpfs-backed overlay on top of it so the
# guest can write anywhere (writes are discarded at power-off), then
# mount the kernel filesystems (proc, sys, dev, tracefs, bpffs, debugfs,
# cgroup2, ...) inside it, bring up loopback, then switch_root into it and
# hand over to stage 2 (init-stage2.sh).
#
# Diagnostics go to /dev/console (ttyS0), which the host saves to
# console.log and prints when the guest fails to report an exit status.

/bin/busybox mkdir -p /bin /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { read -r up _ </proc/uptime; echo "[$up] vmtest-init1: $*" >/dev/console; }
die() {
	say "FATAL: $*"
	# Let the host know we died before the command ran.
	echo "exit 125 init1" >/dev/ttyS2 2>/dev/null
	sleep 1
	poweroff -f
	exit 1
}

[ -r /vmtest/config ] || die "missing /vmtest/config"
. /vmtest/config

say "loading modules: $VMTEST_MODULES"
for m in $VMTEST_MODULES; do
	insmod "/modules/$m.ko" || die "insmod $m failed"
done

mount_root() {
	case "$VMTEST_FS" in
	virtiofs) mount -t virtiofs -o ro hostroot /lower ;;
	9p) mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose,access=any hostroot /lower ;;
	*) die "unknown VMTEST_FS=$VMTEST_FS" ;;
	esac
}
# The virtio device normally probes synchronously during insmod, but give it
# a few seconds just in case.
i=0
until mount_root 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 50 ] || { mount_root; die "cannot mount host root ($VMTEST_FS)"; }
	sleep 0.1
done

say "host root mounted over $VMTEST_FS"
mount -t tmpfs -o mode=0755 vmtest-rw /rw || die "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work vmtest-root /newroot ||
	die "overlay mount failed"

# A fresh /run (host leftovers such as /run/netns/* must not leak in), with
# stage 2 and the per-run files (config, cmd) copied into it, plus
# busybox for the few helpers stage 2 needs (fast: it is in RAM, unlike the
# host's binaries, which come over $VMTEST_FS).
R=/newroot
mount -t tmpfs -o mode=0755,nosuid,nodev vmtest-run $R/run || die "tmpfs /run"
mkdir -p $R/run/vmtest/bin $R/run/netns $R/run/lock $R/run/user
chmod 1777 $R/run/lock
cp -a /vmtest/. $R/run/vmtest/ || die "copy /vmtest"
cp /bin/busybox $R/run/vmtest/bin/busybox

# Kernel filesystems for the final root. Done here with busybox because every
# exec of a host binary costs ~0.3s under TCG.
mnt() { # type source target [options]
	mkdir -p "$R$3" 2>/dev/null
	mount -t "$1" ${4:+-o "$4"} "$2" "$R$3" || say "warning: mount -t $1 $3 failed"
}
mnt proc proc /proc nosuid,nodev,noexec
mnt sysfs sysfs /sys nosuid,nodev,noexec
mnt devtmpfs devtmpfs /dev mode=0755,nosuid
mnt devpts devpts /dev/pts gid=5,mode=620,ptmxmode=666,nosuid,noexec
mnt tmpfs tmpfs /dev/shm mode=1777,nosuid,nodev
mnt mqueue mqueue /dev/mqueue nosuid,nodev,noexec
mnt securityfs securityfs /sys/kernel/security nosuid,nodev,noexec
mnt debugfs debugfs /sys/kernel/debug nosuid,nodev,noexec
mnt tracefs tracefs /sys/kernel/tracing nosuid,nodev,noexec
mnt bpf bpffs /sys/fs/bpf mode=0700
mnt cgroup2 cgroup2 /sys/fs/cgroup nsdelegate
ln -sfn /proc/self/fd $R/dev/fd
ln -sfn /proc/self/fd/0 $R/dev/stdin
ln -sfn /proc/self/fd/1 $R/dev/stdout
ln -sfn /proc/self/fd/2 $R/dev/stderr
[ -e $R/dev/ptmx ] || ln -sfn pts/ptmx $R/dev/ptmx

# The kernel package's modules (from the host-side cache, visible through the
# shared root) so that modprobe / request_module work, e.g. for veth.
if [ -n "$VMTEST_MODDIR" ] && [ -d "$R$VMTEST_MODDIR" ]; then
	mkdir -p "$R/lib/modules/$VMTEST_KVER" &&
		mount -o bind "$R$VMTEST_MODDIR" "$R/lib/modules/$VMTEST_KVER" ||
		say "warning: cannot bind $VMTEST_MODDIR"
fi

hostname vmtest
# Let the guest's hostname resolve (loopback only, like the host's).
grep -qw vmtest $R/etc/hosts 2>/dev/null || echo "127.0.1.1 vmtest" >>$R/etc/hosts
ip link set lo up || say "warning: ip link set lo up failed"
# ttyS1 carries the command's output to the host's stdout, ttyS2 the status.
for t in ttyS1 ttyS2; do
	stty -F /dev/$t raw -echo -echoe -echok -echoctl -echoke || say "warning: stty $t failed"
done

say "switching to the overlay root"
umount /proc /sys
umount /dev 2>/dev/null || umount -l /dev
exec switch_root $R /run/vmtest/bin/busybox sh /run/vmtest/init-stage2.sh
die "switch_root failed"
