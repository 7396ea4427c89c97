/* SPDX-License-Identifier: GPL-2.0 */
/* tcpretrans.h - the record of tcpretrans.bpf.c: one TCP retransmission, and the per-connection count key */

/* what was retransmitted */
enum retrans_type {
	RT_SEGMENT = 1,		/* a data segment (or SYN, FIN) of a socket */
	RT_TLP,			/* the tail loss probe's retransmission of the last segment (with -l) */
	RT_SYNACK,		/* a SYN-ACK of a connection request */
};

struct tcpretrans_event {
	__u32 pid;		/* the process holding the socket's lock, or 0: none (timer, softirq) */
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];		/* pid's task name */
	__u8 family, state, type;	/* AF_INET or AF_INET6; enum tcp_state; enum retrans_type */
	__u8 _pad[5];
};

/* -c: the `counts` map's key, one per connection and type */
struct retrans_key {
	__u8 laddr[16], raddr[16];
	__u16 lport, rport;
	__u8 family, type;
	__u8 _pad[2];
};
