/* SPDX-License-Identifier: GPL-2.0 */
/* tcplife.h - the record of tcplife.bpf.c: one TCP connection, when it closed */
struct tcplife_event {
	__u64 ts_ns;		/* when it reached TCP_CLOSE (bpf_ktime_get_ns) */
	__u64 span_ns;		/* since its first state change; 0: it predates pytracer */
	__u64 tx_bytes;		/* tcp_sock.bytes_acked: sent, and acknowledged by the peer */
	__u64 rx_bytes;		/* tcp_sock.bytes_received */
	__u32 pid;		/* the owner: the process holding the socket (not the softirq's) */
	__u32 uid;
	__u32 netns;
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];
	__u8 family;		/* AF_INET or AF_INET6 (a v4-mapped IPv6 socket: AF_INET) */
	__u8 owner_known;	/* 0: no process was known to hold it (e.g. reset before accept()) */
	__u8 _pad[6];
};
