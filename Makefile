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

BPF_ARCH := $(shell uname -m)
BPF_SRC_DIR := bpf_bytecode
BPF_OUT_DIR ?= pytracer/bpf

BPF_SRCS := $(sort $(wildcard $(BPF_SRC_DIR)/*.bpf.c))
BPF_HDRS := $(sort $(wildcard $(BPF_SRC_DIR)/*.h))
BPF_NAMES := $(patsubst $(BPF_SRC_DIR)/%.bpf.c,%,$(BPF_SRCS))
BPF_OBJS := $(patsubst %,$(BPF_OUT_DIR)/%.bpf.o,$(BPF_NAMES))

# -mcpu=v3: 32-bit jumps/ALU and atomics that return a value (used for the
#   engine test's sequence counter); needs kernel >= 5.12, below our ring
#   buffer floor anyway.
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
	[ $$status -eq 0 ] && echo "check-bytecode: $(words $(BPF_NAMES)) objects up to date"; \
	exit $$status

clean-bytecode:
	rm -f $(BPF_OUT_DIR)/*.bpf.o $(BPF_OUT_DIR)/*.bpf.o.tmp

# ---- other targets ---------------------------------------------------------------
