/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tcp_sock.bpf.h - what the TCP tools read off a socket they are handed by a
 * tracepoint: its addresses and ports (a full socket or a request socket,
 * both start with a sock_common), its state, and the process that holds its
 * lock if one does.  Include after kernel_types.h and the libbpf headers.
 */
#ifndef PYTRACER_TCP_SOCK_BPF_H
#define PYTRACER_TCP_SOCK_BPF_H

/* A connection's addresses as the local socket sees them; IPv4 in the first 4 bytes. */
struct conn_addrs {
	__u8 laddr[16], raddr[16];
	__u16 lport, rport;	/* host byte order */
	__u8 family;		/* AF_INET or AF_INET6 */
};

static const __u8 v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;	/* in6_addr is 4-byte aligned */

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/*
 * Fill `c` from a sock_common.  A dual-stack socket talking IPv4 has IPv4-mapped
 * IPv6 addresses: it is reported as IPv4, as tcpsnoop does, so that -4/-6
 * match what is on the wire.
 */
static __always_inline void read_conn_addrs(const struct sock_common *skc, struct conn_addrs *c)
{
	__u16 family = BPF_CORE_READ(skc, skc_family);

	__builtin_memset(c, 0, sizeof(*c));
	c->lport = BPF_CORE_READ(skc, skc_num);
	c->rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (family == AF_INET) {
		c->family = AF_INET;
		bpf_probe_read_kernel(c->laddr, 4, &skc->skc_rcv_saddr);
		bpf_probe_read_kernel(c->raddr, 4, &skc->skc_daddr);
		return;
	}
	c->family = AF_INET6;
	bpf_probe_read_kernel(c->laddr, 16, &skc->skc_v6_rcv_saddr);
	bpf_probe_read_kernel(c->raddr, 16, &skc->skc_v6_daddr);
	if (is_v4_mapped(c->laddr) && is_v4_mapped(c->raddr)) {
		c->family = AF_INET;
		__builtin_memcpy(c->laddr, c->laddr + 12, 4);
		__builtin_memcpy(c->raddr, c->raddr + 12, 4);
		__builtin_memset(c->laddr + 4, 0, 12);
		__builtin_memset(c->raddr + 4, 0, 12);
	}
}

/*
 * The process this socket's work runs for, or 0.  TCP does its work for a
 * socket either in the task that holds the socket's lock (lock_sock: a
 * system call, and the backlog and deferred timers it processes on
 * release_sock) or in softirq/timer context, which defers to that holder
 * while the lock is owned.  So when sk_lock.owned is set here, the current
 * task is the holder; when it is not, current is whoever was interrupted and
 * says nothing about the socket.  tcpsnoop learns owners the same way
 * (adopt_if_locked).
 */
static __always_inline __u32 lock_holder(const struct sock *sk, char comm[TASK_COMM_LEN])
{
	if (!sk || !BPF_CORE_READ(sk, sk_lock.owned))
		return 0;
	bpf_get_current_comm(comm, TASK_COMM_LEN);
	return bpf_get_current_pid_tgid() >> 32;
}

#endif /* PYTRACER_TCP_SOCK_BPF_H */
