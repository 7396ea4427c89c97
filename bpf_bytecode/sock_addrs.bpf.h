/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sock_addrs.bpf.h - a TCP socket's addresses, ports, family and network
 * namespace as the connection tools print them, read from the socket with
 * CO-RE (tcpconnect, tcpaccept, tcpconnlat).  The family is the one on the
 * wire: an AF_INET6 socket talking to a v4-mapped peer (::ffff:a.b.c.d)
 * gives AF_INET and the IPv4 addresses.  Include after the libbpf headers
 * (bpf_core_read.h, bpf_endian.h) and kernel_types.h.
 */
#ifndef PYTRACER_SOCK_ADDRS_BPF_H
#define PYTRACER_SOCK_ADDRS_BPF_H

struct sock_addrs {
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	__u16 lport, rport;		/* host order */
	__u32 netns;			/* the network namespace's inode number */
	__u8 family;			/* AF_INET or AF_INET6, as on the wire; 0: not an inet socket */
};

static __always_inline int v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/*
 * The local port comes from inet_sport, not skc_num: when a socket goes to
 * CLOSE without an explicit bind(), the kernel releases its port and zeroes
 * skc_num before the state change is traced, but keeps inet_sport.
 */
static __always_inline void read_sock_addrs(struct sock *sk, struct sock_addrs *a)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(a, 0, sizeof(*a));
	a->lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	a->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	a->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (family == AF_INET) {
		a->family = AF_INET;
		bpf_core_read(a->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(a->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		bpf_core_read(a->raddr, 16, &sk->__sk_common.skc_v6_daddr);
		if (v4_mapped(a->raddr)) {
			/* the kernel keeps the IPv4 addresses in skc_rcv_saddr/skc_daddr too */
			__builtin_memset(a->raddr, 0, sizeof(a->raddr));
			a->family = AF_INET;
			bpf_core_read(a->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_core_read(a->raddr, 4, &sk->__sk_common.skc_daddr);
		} else {
			a->family = AF_INET6;
			bpf_core_read(a->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		}
	}
}

#endif /* PYTRACER_SOCK_ADDRS_BPF_H */
