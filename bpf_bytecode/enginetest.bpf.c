// SPDX-License-Identifier: GPL-2.0
/*
 * enginetest.bpf.c - a synthetic, deterministic event source for testing and
 * benchmarking the loader and ring-buffer engine without any networking.
 *
 * The process whose tgid Python writes into `target_tgid` calls getppid() N
 * times; every call produces one struct probe_event (or a `lost` count) and
 * is counted per CPU three ways: by the classic tracepoint program (HASH
 * `counts`), by a tp_btf program (ARRAY `btf_counts`) and by a raw
 * tracepoint program (ARRAY `raw_counts`).  Their totals must agree.
 *
 * It deliberately uses every object feature the loader supports: BTF-defined
 * maps (RINGBUF, PERCPU_ARRAY, HASH, ARRAY), .rodata (`target_tgid`,
 * `getppid_nr`), .data (`arg_magic`), .bss (`next_seq`), a static noinline
 * .text subprogram that itself references global data, a CO-RE read, and the
 * three tracepoint flavours. Only instructions Linux 5.10 accepts (no atomic
 * that returns a value: those need 5.12).
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "channel.h"
#include "enginetest.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_CPUS 1024

/* .rodata, written by Python before load */
const volatile __u32 target_tgid = 0;
const volatile __s64 getppid_nr = 110;	/* __NR_getppid on x86_64 (173 on arm64) */

/* .data */
__u64 arg_magic = ENGINETEST_ARG_MAGIC;

/* .bss */
__u64 next_seq = 0;

EVENTS_RINGBUF(1 << 20);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);		/* cpu */
	__type(value, __u64);		/* getppid calls by target_tgid */
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__type(value, __u64);
} btf_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__type(value, __u64);
} raw_counts SEC(".maps");

/* Keeps the record layout in the object's BTF for the Python-side layout test. */
const struct probe_event *const __unused_probe_event = 0;

/* A real subprogram (.text), with a global-data reference of its own. */
static __noinline __u64 make_arg(__u64 seq)
{
	return seq ^ arg_magic;
}

static __always_inline void count_in_array(void *map)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 *v = bpf_map_lookup_elem(map, &cpu);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int getppid_probe(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u32 cpu;
	struct probe_event *e;
	__u64 seq, *v;

	if (tgid != target_tgid)
		return 0;

	cpu = bpf_get_smp_processor_id();
	v = bpf_map_lookup_elem(&counts, &cpu);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else {
		__u64 one = 1;

		/* lost a race with another program instance on this cpu? add to its entry */
		if (bpf_map_update_elem(&counts, &cpu, &one, BPF_NOEXIST)) {
			v = bpf_map_lookup_elem(&counts, &cpu);
			if (v)
				__sync_fetch_and_add(v, 1);
		}
	}

	/* Not an atomic fetch-and-add: BPF atomics that return the old value need
	 * Linux 5.12 (5.10 refuses them: "BPF_STX uses reserved fields"). The
	 * target is one thread, whose system calls come one after another, so a
	 * plain read and write numbers them without gaps or repeats. */
	seq = next_seq;
	next_seq = seq + 1;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	e->seq = seq;
	e->ts_ns = bpf_ktime_get_ns();
	e->tgid = tgid;
	e->cpu = cpu;
	e->arg = make_arg(seq);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_sys_enter, struct pt_regs *regs, long id)
{
	if (id == getppid_nr && (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid)
		count_in_array(&btf_counts);
	return 0;
}

SEC("raw_tracepoint/sys_enter")
int raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	/* args: (struct pt_regs *regs, long id) */
	if ((__s64)ctx->args[1] == getppid_nr &&
	    (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid)
		count_in_array(&raw_counts);
	return 0;
}
