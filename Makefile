# pytracer build.
#
# BPF bytecode: every bpf_bytecode/<name>.bpf.c is compiled to
# pytracer/bpf/<name>.bpf.o.  The objects are committed and shipped as package
# data, so the build is pinned (compiler and flags) and reproducible (no
# checkout path in the output); `make check-bytecode` proves the committed
# objects match the sources.
#
# Other targets (tests, benchmarks, ...) go in the section at the end.

.DEFAULT_GOAL := all
SHELL := /bin/sh

# ---- BPF bytecode --------------------------------------------------------------

CLANG ?= clang-16
LLVM_STRIP ?= llvm-strip-16
LLVM_OBJDUMP ?= llvm-objdump-16

BPF_ARCH := $(shell uname -m)
BPF_SRC_DIR := bpf_bytecode
BPF_OUT_DIR ?= pytracer/bpf

BPF_SRCS := $(sort $(wildcard $(BPF_SRC_DIR)/*.bpf.c))
BPF_HDRS := $(sort $(wildcard $(BPF_SRC_DIR)/*.h))
BPF_NAMES := $(patsubst $(BPF_SRC_DIR)/%.bpf.c,%,$(BPF_SRCS))
BPF_OBJS := $(patsubst %,$(BPF_OUT_DIR)/%.bpf.o,$(BPF_NAMES))

# -mcpu=v3: 32-bit jumps and ALU (Linux 5.1+). It would also emit atomics
#   that return a value (__sync_fetch_and_add whose result is used, cmpxchg,
#   xchg), which need Linux 5.12: our floor is 5.10, so check-bytecode fails
#   on any of them (an add whose result is unused stays the old XADD).
# -fdebug-prefix-map: BTF line info records source paths as the compiler saw
#   them; map the checkout directory away so objects do not depend on it.
BPF_CFLAGS := -O2 -g -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 \
	-I/usr/include/$(BPF_ARCH)-linux-gnu -I$(BPF_SRC_DIR) \
	-fdebug-prefix-map=$(CURDIR)=. -fno-addrsig \
	-Wall -Wno-unused-function

.PHONY: all bytecode check-bytecode clean-bytecode

all: bytecode

bytecode: $(BPF_OBJS)

# Compile from the repository root with relative source paths; strip DWARF
# (it holds the compile directory) but keep .BTF and .BTF.ext.
$(BPF_OUT_DIR)/%.bpf.o: $(BPF_SRC_DIR)/%.bpf.c $(BPF_HDRS)
	@mkdir -p $(@D)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@.tmp
	$(LLVM_STRIP) -g $@.tmp -o $@
	@rm -f $@.tmp

# Rebuild into a temporary directory and compare byte for byte.
check-bytecode:
	@tmp=$$(mktemp -d) || exit 1; \
	trap 'rm -rf "$$tmp"' EXIT INT TERM; \
	$(MAKE) --no-print-directory -s BPF_OUT_DIR="$$tmp" bytecode || exit 1; \
	status=0; \
	for name in $(BPF_NAMES); do \
		obj=$(BPF_OUT_DIR)/$$name.bpf.o; \
		if [ ! -f "$$obj" ]; then \
			echo "check-bytecode: $$obj is missing (run 'make bytecode')"; status=1; \
		elif ! cmp -s "$$tmp/$$name.bpf.o" "$$obj"; then \
			echo "check-bytecode: $$obj is stale (run 'make bytecode')"; status=1; \
		fi; \
	done; \
	for obj in $(BPF_OUT_DIR)/*.bpf.o; do \
		[ -f "$$obj" ] || continue; \
		name=$$(basename "$$obj" .bpf.o); \
		if [ ! -f "$(BPF_SRC_DIR)/$$name.bpf.c" ]; then \
			echo "check-bytecode: $$obj has no source $(BPF_SRC_DIR)/$$name.bpf.c"; status=1; \
		fi; \
	done; \
	for obj in $(BPF_OUT_DIR)/*.bpf.o; do \
		[ -f "$$obj" ] || continue; \
		if $(LLVM_OBJDUMP) -d "$$obj" | grep -E 'atomic_fetch|cmpxchg|xchg' >/dev/null; then \
			echo "check-bytecode: $$obj uses an atomic that returns a value (Linux 5.12+; our floor is 5.10)"; \
			status=1; \
		fi; \
	done; \
	[ $$status -eq 0 ] && echo "check-bytecode: $(words $(BPF_NAMES)) objects up to date, none needs more than Linux 5.10's instruction set"; \
	exit $$status

clean-bytecode:
	rm -f $(BPF_OUT_DIR)/*.bpf.o $(BPF_OUT_DIR)/*.bpf.o.tmp

# ---- other targets ---------------------------------------------------------------

# ---- setup, run, tests ---------------------------------------------------------------
# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
ARGS ?=
KERNEL ?= linux-image-6.1.0-47-cloud-amd64
# The kernels CI proves (`make vmtest-all`), besides the host's: Debian 11's 5.10 (the floor), Debian 12's 6.1
# and 6.12 cloud kernels. vmtest fetches packages the system's apt lists lack through lists of its own.
VM_KERNELS ?= linux-image-5.10.0-32-cloud-amd64 linux-image-6.1.0-47-cloud-amd64 \
	linux-image-6.12.117+deb12-cloud-amd64

.PHONY: setup run test vmtest vmtest-all vmtest-lockdown test-packages

# The Debian packages the tests need (.ci/packages, the list .ci/run installs too): installed when missing if
# we are root on Debian/Ubuntu, else listed before the tests start. PYTRACER_NO_APT=1: only list them.
test-packages:
	@.ci/install-packages

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VPY) setup.cfg pyproject.toml
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

# The editable install runs pytracer from this tree, where nothing writes bytecode if PYTHONDONTWRITEBYTECODE
# is set: every start would then compile pytracer's modules again (~25 ms). Compile them here (only what
# changed; pip does this itself for a normal install).
setup: $(VENV)/.installed
	@$(VPY) -m compileall -q pytracer

run: setup
	$(VPY) -m pytracer $(ARGS)

test: test-packages setup
	$(VPY) -m pytest -q tests

# The kernel test suite on another Debian kernel package, booted under qemu (see docs/vmtest.md). The guest
# has no network, so the packaging test (pip from PyPI) runs on the host only; benchmarks and the soak
# are host-only too (timing-bound, and the guest is emulated).
# Under TCG the kernel suite takes 8-14 min per kernel (the capture oracle is most of it); more on a loaded host.
VM_TIMEOUT ?= 2400
# The capture oracle's bulk transfer under emulation (40 MB on the host): GSO all the same, in its time limits.
VM_BULK_BYTES ?= 8000000
# The tool family under emulation: one test per tool (the one that needs the most of the kernel: the right
# process, real bytes, the kernel's own counters), so that every tool runs on every CI kernel within CI's
# time; their whole files run on the host (`make test`).
VM_TOOL_TESTS ?= 'tests/test_tcpconnect.py::test_loopback_connects[4]' \
	'tests/test_tcpconnect.py::test_refused_connects_name_the_error_and_the_process[6]' \
	'tests/test_tcpaccept.py::test_loopback_accepts_name_the_server[4]' \
	tests/test_tcpconnlat.py::test_a_retransmitted_syn_is_in_the_latency \
	'tests/test_tcplife.py::test_peers_on_loopback[6-::1]' \
	'tests/test_tcptop.py::test_bytes_per_process_and_connection[4-127.0.0.1]' \
	tests/test_tcptop.py::test_handed_over_socket_counts_under_the_process_doing_io \
	'tests/test_tcpretrans.py::test_dropped_segment_retransmissions[4]' \
	'tests/test_tcpdrop.py::test_syn_to_a_closed_port[6]' \
	tests/test_tcprtt.py::test_histogram_holds_every_probe_event \
	'tests/test_pcapng.py::test_loopback_packets_equal_tcpdump[4]' \
	tests/test_handshake_race.py
VM_TESTS ?= tests/test_engine.py tests/test_iterator.py tests/test_tcpsnoop.py tests/test_cli.py \
	tests/test_faults.py tests/test_real_programs.py tests/test_capture_oracle.py tests/test_kernel_support.py \
	$(VM_TOOL_TESTS)
vmtest: setup
	PYTRACER_BULK_BYTES=$(VM_BULK_BYTES) tests/vm/vmtest --kernel-package $(KERNEL) --timeout $(VM_TIMEOUT) -- \
		$(abspath $(VPY)) -m pytest -q -rfEx -p no:cacheprovider \
		--durations=8 -k 'not pip_install' $(VM_TESTS)

# The same suite on every kernel of VM_KERNELS, one after the other; a summary line per kernel at the end.
# Then a kernel that cannot run pytracer, for real: KERNEL booted with lockdown=confidentiality, where
# pytracer must exit 3 with one sentence (tests/test_kernel_support.py).
vmtest-all: setup
	@status=0; MAKE="$(MAKE)" tests/vm/matrix $(VM_KERNELS) || status=1; \
	echo "== vmtest-all: $(KERNEL) booted with lockdown=confidentiality"; \
	$(MAKE) --no-print-directory vmtest-lockdown || status=1; \
	exit $$status

vmtest-lockdown: setup
	PYTRACER_EXPECT_LOCKDOWN=confidentiality tests/vm/vmtest --kernel-package $(KERNEL) \
		--append lockdown=confidentiality -- $(abspath $(VPY)) -m pytest -q -p no:cacheprovider \
		tests/test_kernel_support.py -k lockdown

# ---- benchmarks (bench/, BENCHMARKS.md) ---------------------------------------------------------
# `make bench` (a few minutes, as root) installs the peers (bench/setup.sh: apt, idempotent), runs every
# benchmark against them in one run and regenerates BENCHMARKS.md. `make bench-quick` (under a minute)
# writes bench/results/BENCHMARKS-quick.md instead. Benchmarks never gate CI (tests/test_bench_smoke.py
# only checks that the scripts still run).
BENCH_PY ?= $(if $(VENV),$(VENV),.venv)/bin/python

.PHONY: bench bench-quick bench-setup

bench-setup: setup
	bench/setup.sh

bench: bench-setup
	$(BENCH_PY) bench/run.py --out BENCHMARKS.md

bench-quick: bench-setup
	@mkdir -p bench/results
	$(BENCH_PY) bench/run.py --quick --out bench/results/BENCHMARKS-quick.md

# ---- reliability: fuzzing and soak (issue #5; tests/test_fuzz.py, tests/fuzz/, bench/soak.py) ---------
# `make fuzz`: a long fuzzing run of every target in tests/fuzz/harness.py, FUZZ_SECONDS each (default
# 300), coverage-guided with atheris (installed into the venv if pip can; crashes are saved under
# tests/fuzz/crashes/, replay with `harness.py --target T --repro FILE`); without atheris, the hypothesis
# tests of tests/test_fuzz.py with FUZZ_SCALE (default 100) times their CI example counts.
# `make soak` (root): bench/soak.py for SOAK_SECONDS (default 600) under the mixed workload; the report is
# printed and written to SOAK_REPORT (JSON); exit status 1 if the tracer grew, leaked or misbehaved.
RELY_PY ?= $(if $(VENV),$(VENV),.venv)/bin/python
FUZZ_SECONDS ?= 300
FUZZ_SCALE ?= 100
FUZZ_TARGETS ?= elf pipeline btf_object btf_vmlinux btf_ext core records
SOAK_SECONDS ?= 600
SOAK_REPORT ?= /tmp/pytracer-soak-report.json

.PHONY: fuzz soak

fuzz: setup
	@$(RELY_PY) -c 'import atheris' 2>/dev/null || $(RELY_PY) -m pip install -q atheris 2>/dev/null || true
	@if $(RELY_PY) -c 'import atheris' 2>/dev/null; then \
		status=0; \
		for t in $(FUZZ_TARGETS); do \
			echo "== fuzz $$t ($(FUZZ_SECONDS) s, atheris)"; \
			$(RELY_PY) tests/fuzz/harness.py --target $$t --seconds $(FUZZ_SECONDS) || status=1; \
		done; \
		exit $$status; \
	else \
		echo "== fuzz: atheris unavailable; hypothesis with $(FUZZ_SCALE)x the CI examples"; \
		PYTRACER_FUZZ_EXAMPLES=$(FUZZ_SCALE) $(RELY_PY) -m pytest -q tests/test_fuzz.py; \
	fi

soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(RELY_PY) bench/soak.py --json $(SOAK_REPORT)

# ---- appliances (issue 15): one file, a vendorable directory ------------------------------------------
# `make pyz` writes dist/pytracer.pyz: pytracer, its BPF object, pyelftools and construct (the newest
# versions setup.cfg allows that still run on Python 3.9, fetched by pip into build/pyz-deps) and their
# licences, in one zipapp that runs with a bare `python3 dist/pytracer.pyz [options]` (3.9 to 3.13).
# `make vendor VENDOR_DIR=/path` writes the same tree as a directory (README: "Appliances").
PYZ ?= dist/pytracer.pyz
PYZ_DEPS ?= build/pyz-deps
VENDOR_DIR ?= dist/pytracer-vendor

.PHONY: pyz vendor

pyz: setup
	rm -rf $(PYZ_DEPS)
	$(VPY) tools/pyz.py --deps $(PYZ_DEPS) --out $(PYZ)

vendor: setup
	rm -rf $(PYZ_DEPS) $(VENDOR_DIR)
	$(VPY) tools/pyz.py --deps $(PYZ_DEPS) --dir $(VENDOR_DIR)

# ---- Python matrix (issue 15): the suite under Debian 11's python3.9 and Debian 13's python3.13 -------------
# In debootstrap chroots on this kernel (tests/matrix/: `chroot` builds and enters them, kept under
# /var/cache/pytracer-matrix and reused; `run` installs the dependencies at setup.cfg's oldest versions on
# 3.9, the newest on 3.13). Root; the first run debootstraps (a few minutes per suite, from the host's apt
# mirror). Debian 12's python3.11 is the host's own suite (`make test`). MATRIX_SUITES narrows it;
# MATRIX_ARGS goes to pytest.
MATRIX_SUITES ?= bullseye trixie
MATRIX_ARGS ?=

.PHONY: pytest-matrix

pytest-matrix: setup
	@status=0; for s in $(MATRIX_SUITES); do \
		MATRIX_PYTHON=$(abspath $(VPY)) tests/matrix/run $$s $(MATRIX_ARGS) || status=1; \
	done; exit $$status
