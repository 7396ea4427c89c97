#!/bin/sh
# Install the benchmark's peers and tools (idempotent: apt runs only when something is missing),
# and build the load generator. Needs root. Network use: Debian's apt archive only.
set -eu
cd "$(dirname "$0")"
PKGS="libbpf-tools bpfcc-tools bpftrace iperf3 gcc libc6-dev libbpf-dev iproute2 procps util-linux"
missing=""
for p in $PKGS; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "bench/setup.sh: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
mkdir -p build
if [ ! -x build/loadgen ] || [ loadgen.c -nt build/loadgen ]; then
	${CC:-cc} -O2 -Wall -pthread -o build/loadgen.tmp loadgen.c && mv build/loadgen.tmp build/loadgen
fi

if [ ! -x build/rbcheck ] || [ rbcheck.c -nt build/rbcheck ]; then
	${CC:-cc} -O2 -o build/rbcheck.tmp rbcheck.c -lbpf && mv build/rbcheck.tmp build/rbcheck
fi
echo "bench/setup.sh: peers installed, bench/build/{loadgen,rbcheck} built"
