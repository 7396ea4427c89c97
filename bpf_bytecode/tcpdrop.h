/* SPDX-License-Identifier: GPL-2.0 */
/* tcpdrop.h - the record of tcpdrop.bpf.c: one TCP packet the kernel dropped, with the kernel stack */
#define DROP_STACK_DEPTH	64
#define DROP_REASON_UNKNOWN	0xffffffff	/* the tracepoint has no reason (before Linux 5.17) */

struct tcpdrop_event {
	__u8 stack[DROP_STACK_DEPTH * 8];	/* kernel return addresses (u64), innermost first; bytes: records
					 * decode integer arrays only as bytes */
	__s32 stack_bytes;	/* what bpf_get_stack wrote, or its negative error */
	__u32 reason;		/* enum skb_drop_reason (names from the kernel's BTF), or DROP_REASON_UNKNOWN */
	__u32 pid;		/* the process holding the socket's lock, or 0: none (softirq, no socket) */
	__u16 sport, dport;	/* the packet's, host byte order */
	__u8 saddr[16], daddr[16];	/* the packet's; IPv4 in the first 4 bytes */
	char comm[16];		/* pid's task name */
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 state;		/* enum tcp_state of the socket the packet belonged to, 0: none known */
	__u8 tcpflags;		/* enum tcp_flag bits of the TCP header */
	__u8 _pad[5];
};
