/* SPDX-License-Identifier: GPL-2.0 */
/* tcptop.h - the `top` map of tcptop.bpf.c: bytes per (owner, connection), cumulative, read by user space
 * every interval */
struct tcptop_key {
	__u32 pid;		/* the owner (the process doing the I/O) */
	__u32 netns;
	__u16 lport, rport;	/* host byte order */
	__u8 family;		/* AF_INET or AF_INET6 (a v4-mapped IPv6 socket: AF_INET) */
	__u8 _pad[3];
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
};

struct tcptop_value {
	__u64 tx_bytes;		/* sent: sock_send_length's return values */
	__u64 rx_bytes;		/* received: sock_recv_length's (MSG_PEEK left out) */
	__u32 uid;
	char comm[16];
	__u8 _pad[4];
};
