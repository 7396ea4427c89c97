/* SPDX-License-Identifier: GPL-2.0 */
/* tcpstates.h - the record of tcpstates.bpf.c: one TCP state change */
struct tcpstates_event {
	__u32 pid;		/* the task that ran (in softirq: whoever was interrupted) */
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];
	__u8 family, oldstate, newstate;	/* AF_INET or AF_INET6; enum tcp_state */
	__u8 _pad[5];
};
