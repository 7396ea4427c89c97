// SPDX-License-Identifier: GPL-2.0
/*
 * tcplife.bpf.c - one record per TCP connection when it closes: its owner
 * (sockowner.bpf.h: the process that connected, accepted or last held it,
 * never whoever ran in softirq), addresses, the kernel's own byte counters
 * (tcp_sock bytes_acked / bytes_received, read with CO-RE at TCP_CLOSE) and
 * its duration since the first state change.  No per-packet program: the
 * record is made in sockowner.bpf.h's TCP_CLOSE hook.
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "filters.bpf.h"
#include "tcplife.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_LIFE_PORTS	8	/* tools/tcplife/cli.py: MAX_PORTS */

/* -L / -D: local and remote port lists (host order), beside the common -P */
const volatile __u16 local_ports[MAX_LIFE_PORTS] = {};
const volatile __u32 n_local_ports = 0;
const volatile __u16 remote_ports[MAX_LIFE_PORTS] = {};
const volatile __u32 n_remote_ports = 0;

#include "sockowner.bpf.h"	/* no members of our own: SOCK_INFO_TOOL_FIELDS stays empty */

EVENTS_RINGBUF(1 << 20);
const struct tcplife_event *const __unused_event = 0;

static __always_inline int port_listed(const volatile __u16 *ports, __u32 n, __u16 port)
{
	if (n == 0)
		return 1;
	for (int i = 0; i < MAX_LIFE_PORTS; i++) {
		if (i >= n)
			break;
		if (ports[i] == port)
			return 1;
	}
	return 0;
}

/*
 * What the kernel's counters say, in payload bytes.  bytes_acked counts
 * sequence numbers the peer acknowledged, so it holds our SYN (an active open:
 * a listener's child starts after its SYN-ACK) and our FIN once acknowledged;
 * bytes_received holds the peer's FIN.  A connection that predates pytracer
 * is not known to be active: its SYN stays counted.
 */
static __always_inline __u64 payload_acked(__u64 skp, const struct sock_info *si, int oldstate)
{
	struct tcp_sock *tp = (struct tcp_sock *)skp;
	__u64 n = BPF_CORE_READ(tp, bytes_acked);
	int fin_sent = oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 ||
		       oldstate == TCP_CLOSING || oldstate == TCP_LAST_ACK;

	if (n && si->start_ns && !(si->state_flags & SI_PASSIVE))
		n--;		/* our SYN */
	if (n && fin_sent && BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		n--;		/* our FIN, acknowledged with everything before it */
	return n;
}

static __always_inline unsigned long sk_flags(__u64 skp)
{
	struct sock *sk = (struct sock *)skp;

	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return BPF_CORE_READ(sk, __sk_common.skc_flags);
	return BPF_CORE_READ((struct sock___flags *)sk, sk_flags);
}

static __always_inline __u64 payload_received(__u64 skp)
{
	__u64 n = BPF_CORE_READ((struct tcp_sock *)skp, bytes_received);

	/* tcp_fin() sets SOCK_DONE when the peer's FIN arrives (nothing else sets it on TCP) */
	if (n && (sk_flags(skp) & (1UL << SOCK_DONE)))
		n--;
	return n;
}

static __always_inline void sockowner_on_tuple(const struct tuple *t)
{
}

/* An owner found late is only remembered: the record, at close, names the last one. */
static __always_inline void sockowner_on_owner(__u64 skp, struct sock_info *si, struct owner *o,
					       int first, int was_unknown)
{
	publish_owner(si, o);
}

static __always_inline void sockowner_on_close(__u64 skp, struct sock_info *si, int oldstate)
{
	struct tcplife_event *e;
	struct tuple t;
	struct owner o;
	__u64 now;

	/*
	 * The addresses from the socket; its local port from inet_sport: by the
	 * time inet_sock_set_state reports TCP_CLOSE the port is released and
	 * skc_num is 0.
	 */
	tuple_from_sk(skp, &t);
	t.lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)skp, inet_sport));
	if (!family_pass(t.family) || !ports_pass(t.lport, t.rport) ||
	    !port_listed(local_ports, n_local_ports, t.lport) ||
	    !port_listed(remote_ports, n_remote_ports, t.rport))
		return;
	snapshot_owner(si, &o);
	/* an unknown owner passes owner_pass(); no process held it, so no owner filter can take it */
	if (!owner_pass(&o) || (!(o.flags & SI_OWNER_KNOWN) && owner_filters_active()))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	now = bpf_ktime_get_ns();
	e->ts_ns = now;
	e->span_ns = si->start_ns ? now - si->start_ns : 0;
	e->tx_bytes = payload_acked(skp, si, oldstate);
	e->rx_bytes = payload_received(skp);
	e->netns = t.netns ? t.netns : si->netns;
	e->lport = t.lport;
	e->rport = t.rport;
	__builtin_memcpy(e->laddr, t.laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, t.raddr, sizeof(e->raddr));
	e->family = t.family;
	if (o.flags & SI_OWNER_KNOWN) {
		e->owner_known = 1;
		e->pid = o.pid;
		e->uid = o.uid;
		__builtin_memcpy(e->comm, o.comm, sizeof(e->comm));
	}
	bpf_ringbuf_submit(e, 0);
}
