// SPDX-License-Identifier: GPL-2.0
/*
 * tcpretrans.bpf.c - TCP retransmissions (tcp:tcp_retransmit_skb) and SYN-ACK
 * retransmissions (tcp:tcp_retransmit_synack), filtered by port and family;
 * one record each, or with -c a count per connection in the kernel.
 *
 * tp_btf programs: they see the socket itself and, unlike classic tracepoint
 * programs, are not skipped while another BPF program runs on the CPU.  From
 * Linux 6.17 on the tracepoint also fires for retransmissions that failed
 * (its third argument, err, is nonzero; nothing went on the wire):
 * on_retransmit_err skips those, on_retransmit serves the older kernels where
 * the tracepoint has two arguments and fires on success only.  User space
 * loads the one that matches the kernel's BTF.
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
#include "tcpretrans.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 20);
/* keep the record, the count key and the names in BTF, where user space reads them */
const struct tcpretrans_event *const __unused_event = 0;
const struct retrans_key *const __unused_key = 0;
const enum tcp_state *const __unused_states = 0;
const enum retrans_type *const __unused_types = 0;

const volatile __u8 count_only = 0;	/* -c: count per connection, no records */
const volatile __u8 mark_tlp = 0;	/* -l: tell tail loss probes apart */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct retrans_key);
	__type(value, __u64);
} counts SEC(".maps");

/* -c connections that did not fit in `counts`: a loss reason */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} uncounted SEC(".maps");

static __always_inline void count(const struct conn_addrs *c, __u8 type)
{
	struct retrans_key k = {};
	__u64 one = 1, *v;

	__builtin_memcpy(k.laddr, c->laddr, 16);
	__builtin_memcpy(k.raddr, c->raddr, 16);
	k.lport = c->lport;
	k.rport = c->rport;
	k.family = c->family;
	k.type = type;
	v = bpf_map_lookup_elem(&counts, &k);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	/* another CPU may have added it meanwhile: then add to its count */
	if (bpf_map_update_elem(&counts, &k, &one, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&counts, &k);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&uncounted, &zero);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void report(const struct sock *sk, const struct sock_common *skc, __u8 type)
{
	struct tcpretrans_event *e;
	struct conn_addrs c;

	read_conn_addrs(skc, &c);
	if (!family_pass(c.family) || !ports_pass(c.lport, c.rport))
		return;
	if (count_only) {
		count(&c, type);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->pid = lock_holder(sk, e->comm);
	e->lport = c.lport;
	e->rport = c.rport;
	__builtin_memcpy(e->laddr, c.laddr, 16);
	__builtin_memcpy(e->raddr, c.raddr, 16);
	e->family = c.family;
	e->state = BPF_CORE_READ(skc, skc_state);
	e->type = type;
	bpf_ringbuf_submit(e, 0);
}

/*
 * A tail loss probe (RFC 8985) is sent from the write timer while its pending
 * event is still ICSK_TIME_LOSS_PROBE (tcp_send_loss_probe clears it only
 * after sending), and only in the Open congestion state; every other
 * retransmission happens under another pending event (the RTO clears it
 * first, RACK's reordering timer has its own) or in Recovery/Loss.  No
 * tracepoint marks probes that send new data instead: those are no
 * retransmission and are not seen.
 */
static __always_inline __u8 segment_type(const struct sock *sk)
{
	const struct inet_connection_sock *icsk = (const struct inet_connection_sock *)sk;

	if (mark_tlp && BPF_CORE_READ(icsk, icsk_pending) == ICSK_TIME_LOSS_PROBE &&
	    BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state) == TCP_CA_Open)
		return RT_TLP;
	return RT_SEGMENT;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	report(sk, &sk->__sk_common, segment_type(sk));
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit_err, const struct sock *sk, const struct sk_buff *skb, int err)
{
	if (err)
		return 0;
	report(sk, &sk->__sk_common, segment_type(sk));
	return 0;
}

/* sk is the listener; the request socket has the connection's addresses */
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(on_synack, const struct sock *sk, const struct request_sock *req)
{
	report(0, &req->__req_common, RT_SYNACK);
	return 0;
}
