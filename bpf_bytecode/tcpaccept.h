/* SPDX-License-Identifier: GPL-2.0 */
/* tcpaccept.h - the record of tcpaccept.bpf.c: one connection accept() or accept4() returned */
struct tcpaccept_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() at the syscall's return */
	__u32 pid, uid;		/* the process that accepted (tgid), its uid */
	__u32 netns;		/* network namespace inode */
	__u16 lport, rport;	/* host byte order */
	__u8 laddr[16], raddr[16];	/* IPv4 in the first 4 bytes */
	char comm[16];
	__u8 family;		/* AF_INET or AF_INET6, as on the wire */
	__u8 _pad[7];
};
