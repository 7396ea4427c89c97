/* SPDX-License-Identifier: GPL-2.0 */
/*
 * channel.h - how every pytracer BPF object reports to user space.
 *
 * Records go through a ring buffer named `events`; a record that cannot be
 * reserved (the buffer is full) is counted in the per-CPU counter `lost`.
 * pytracer finds both by name and reports the counter's sum as lost records
 * (pytracer/ringbuf.py, pytracer/tcpsnoop.py), so a full buffer is never
 * silent.  Include after the libbpf headers.
 */
#ifndef PYTRACER_CHANNEL_H
#define PYTRACER_CHANNEL_H

/* the ring buffer, `bytes` long (a power of two; user space may resize it) */
#define EVENTS_RINGBUF(bytes)					\
	struct {						\
		__uint(type, BPF_MAP_TYPE_RINGBUF);		\
		__uint(max_entries, bytes);			\
	} events SEC(".maps")

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&lost, &zero);

	/* atomic: a program can interrupt another on the same CPU (softirq) */
	if (v)
		__sync_fetch_and_add(v, 1);
}

#endif
