/* SPDX-License-Identifier: GPL-2.0 */
/* tcpconnect.h - the record of tcpconnect.bpf.c: one connect() and how its handshake ended */

/* how the handshake ended; an enum so that user space reads the values from BTF */
enum connect_result {
	CONNECT_ESTABLISHED = 0,	/* SYN_SENT -> ESTABLISHED: the peer answered */
	CONNECT_FAILED = 1,		/* SYN_SENT -> CLOSE with an error (reset, timeout, ...): `error` */
	CONNECT_CLOSED = 2,		/* SYN_SENT -> CLOSE with none: the program closed the socket first */
};

struct tcpconnect_event {
	__u64 start_ns;		/* bpf_ktime_get_ns() at CLOSE -> SYN_SENT (connect() sent the SYN) */
	__u64 end_ns;		/* at the outcome */
	__u32 pid, uid;		/* the process that called connect() (tgid), its uid */
	__u32 netns;		/* network namespace inode */
	__s32 error;		/* errno of a failed connect (ECONNREFUSED, ETIMEDOUT, ...), else 0 */
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];
	__u8 family;		/* AF_INET or AF_INET6, as on the wire */
	__u8 result;		/* enum connect_result */
	__u8 _pad[2];
};
