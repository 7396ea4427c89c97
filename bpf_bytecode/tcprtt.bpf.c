// SPDX-License-Identifier: GPL-2.0
/*
 * tcprtt.bpf.c - a histogram of TCP's smoothed round trip time, counted in
 * the kernel: every tcp:tcp_probe (a segment received by an established
 * socket, tcp_rcv_established) adds the socket's srtt to a log2 bucket of
 * the `hists` map, per address with -b/-B.  User space reads the map once an
 * interval, so the cost does not grow with what is printed.  The counters
 * only ever grow: user space prints the difference between two reads, so
 * nothing counted between a read and a reset can be lost.
 *
 * tp_btf: the socket is read directly (tcp_sock.srtt_us, with CO-RE), the
 * same value the tracepoint's own srtt field shows (srtt_us >> 3), on every
 * kernel that has the tracepoint (4.16+, 5.10 included).
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "filters.bpf.h"
#include "tcp_sock.bpf.h"
#include "tcprtt.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 12);	/* unused (no records), but every object reports through channel.h */
const struct rtt_key *const __unused_key = 0;
const struct rtt_hist *const __unused_hist = 0;

const volatile __u16 filter_lport = 0;		/* -p; 0: any */
const volatile __u16 filter_rport = 0;		/* -P */
const volatile __u8 filter_laddr[16] = {};	/* -a, when laddr_family is set */
const volatile __u8 laddr_family = 0;
const volatile __u8 filter_raddr[16] = {};	/* -A */
const volatile __u8 raddr_family = 0;
const volatile __u8 key_by = 0;			/* 0 all, 1 local address (-b), 2 remote address (-B) */
const volatile __u8 in_ms = 0;			/* -m: milliseconds */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct rtt_key);
	__type(value, struct rtt_hist);
} hists SEC(".maps");

/* samples of addresses that did not fit in `hists`: a loss reason */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unbinned SEC(".maps");

static const struct rtt_hist zero_hist = {};

static __always_inline int addr_is(const __u8 *a, const volatile __u8 *want, __u8 family)
{
	int n = family == AF_INET ? 4 : 16;

	for (int i = 0; i < 16; i++) {
		if (i >= n)
			break;
		if (a[i] != want[i])
			return 0;
	}
	return 1;
}

/* floor(log2(v)), 0 for 0 and 1 */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(on_probe, struct sock *sk, struct sk_buff *skb)
{
	struct rtt_key key = {};
	struct rtt_hist *h;
	struct conn_addrs c;
	__u64 srtt;
	__u32 slot;

	read_conn_addrs(&sk->__sk_common, &c);
	if (!family_pass(c.family))
		return 0;
	if (filter_lport && c.lport != filter_lport)
		return 0;
	if (filter_rport && c.rport != filter_rport)
		return 0;
	if (laddr_family && (c.family != laddr_family || !addr_is(c.laddr, filter_laddr, c.family)))
		return 0;
	if (raddr_family && (c.family != raddr_family || !addr_is(c.raddr, filter_raddr, c.family)))
		return 0;
	if (key_by) {
		__builtin_memcpy(key.addr, key_by == 1 ? c.laddr : c.raddr, 16);
		key.family = c.family;
	}
	srtt = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	if (in_ms)
		srtt /= 1000;
	slot = log2_u64(srtt);
	if (slot >= RTT_SLOTS)
		slot = RTT_SLOTS - 1;
	h = bpf_map_lookup_elem(&hists, &key);
	if (!h) {
		/* another CPU may add it meanwhile: then use its */
		bpf_map_update_elem(&hists, &key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &key);
		if (!h) {
			__u32 zero = 0;
			__u64 *n = bpf_map_lookup_elem(&unbinned, &zero);

			if (n)
				__sync_fetch_and_add(n, 1);
			return 0;
		}
	}
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->latency, srtt);
	__sync_fetch_and_add(&h->cnt, 1);
	return 0;
}
