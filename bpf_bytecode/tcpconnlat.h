/* SPDX-License-Identifier: GPL-2.0 */
/* tcpconnlat.h - the record of tcpconnlat.bpf.c: one active open's handshake and how long it took */
struct tcpconnlat_event {
	__u64 latency_ns;	/* CLOSE -> SYN_SENT to SYN_SENT -> ESTABLISHED, bpf_ktime_get_ns() */
	__u64 end_ns;		/* at ESTABLISHED */
	__u32 pid, uid;		/* the process that called connect() (tgid), its uid */
	__u32 netns;		/* network namespace inode */
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];
	__u8 family;		/* AF_INET or AF_INET6, as on the wire */
	__u8 _pad[7];
};
