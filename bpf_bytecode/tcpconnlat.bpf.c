// SPDX-License-Identifier: GPL-2.0
/*
 * tcpconnlat.bpf.c - the latency of every active TCP open: from the state
 * change connect() makes (CLOSE -> SYN_SENT, in the connecting task) to
 * the one the peer's SYN-ACK makes (SYN_SENT -> ESTABLISHED, usually in
 * softirq), both stamped with bpf_ktime_get_ns(), named after the task that
 * connected (active_open.bpf.h).  SYN retransmissions are inside it.  Only
 * handshakes that took at least `min_latency_ns` are reported; failed ones
 * are forgotten.  tp_btf, not classic: see tcpconnect.bpf.c.
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "filters.bpf.h"
#include "owner.bpf.h"
#include "sock_addrs.bpf.h"
#include "active_open.bpf.h"
#include "tcpconnlat.h"
#include "nest.bpf.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 20);
/* keep the record in BTF, where user space reads it */
const struct tcpconnlat_event *const __unused_event = 0;

const volatile __u64 min_latency_ns = 0;

static __always_inline int state_change(struct sock *sk, int oldstate, int newstate)
{
	struct tcpconnlat_event *e;
	struct active_open *ao;
	struct sock_addrs a;
	__u64 now, latency;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		active_open_begin(sk);
		return 0;
	}
	/* the end of a handshake: SYN_SENT, or SYN_RECV after a simultaneous open */
	if ((oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV) ||
	    (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE))
		return 0;
	ao = active_open_lookup(sk);
	if (!ao)
		return 0;
	now = bpf_ktime_get_ns();
	latency = now - ao->start_ns;
	if (newstate != TCP_ESTABLISHED || latency < min_latency_ns)
		goto done;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		goto done;
	}
	read_sock_addrs(sk, &a);
	__builtin_memset(e, 0, sizeof(*e));
	e->latency_ns = latency;
	e->end_ns = now;
	e->pid = ao->o.pid;
	e->uid = ao->o.uid;
	e->netns = a.netns;
	e->lport = a.lport;
	e->rport = a.rport;
	__builtin_memcpy(e->laddr, a.laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, a.raddr, sizeof(e->raddr));
	__builtin_memcpy(e->comm, ao->o.comm, sizeof(e->comm));
	e->family = a.family;
	bpf_ringbuf_submit(e, 0);
done:
	active_open_end(sk);
	return 0;
}

/* connect() changes state with softirqs enabled, where a handshake ending can nest (nest.bpf.h) */
TP_BTF_NESTABLE(on_state, "inet_sock_set_state", sk, oldstate << 8 | newstate,
		state_change(sk, oldstate, newstate),
		struct sock *sk, int oldstate, int newstate)
