/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tcprtt.h - the histogram tcprtt.bpf.c keeps in the kernel: a key per
 * address (or one for all) and log2 buckets of the smoothed RTT.  No records:
 * user space reads the map at each interval.
 */
#define RTT_SLOTS	27	/* 2^26 us is 67 s: the last bucket takes anything larger */

struct rtt_key {
	__u8 addr[16];		/* -b/-B: the local/remote address, IPv4 in the first 4 bytes; else zero */
	__u8 family;		/* AF_INET or AF_INET6 with -b/-B; else 0 */
	__u8 _pad[7];
};

/* The value: running totals since the start (user space prints the differences), all u64. */
struct rtt_hist {
	__u64 latency;		/* sum of the samples, in the histogram's unit */
	__u64 cnt;		/* samples */
	__u64 slots[RTT_SLOTS];	/* samples by log2 of their value */
};
