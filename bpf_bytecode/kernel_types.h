/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kernel_types.h - the few kernel types pytracer's BPF programs touch.
 *
 * This replaces a generated vmlinux.h.  Every struct carries
 * __attribute__((preserve_access_index)), so each field access is recorded as
 * a CO-RE relocation and resolved by *name* against the running kernel's BTF
 * when the object is loaded.  Consequences:
 *   - only the fields we read are declared, in any order, and the local
 *     offsets/sizes are meaningless (the loader rewrites them);
 *   - fields that live inside anonymous unions/structs in the kernel (most of
 *     sock_common and sk_buff) are declared flat here: the relocation path is
 *     then simple on our side and the kernel-side lookup descends into the
 *     anonymous members by name;
 *   - field *types* must stay compatible (integer vs pointer vs struct), and
 *     integer sizes should match: a CO-RE read copies the local size.
 *
 * Checked against Linux 6.18's BTF (/sys/kernel/btf/vmlinux); see
 * docs/bpf-design.md for the kernels/fields this relies on.
 */
#ifndef PYTRACER_KERNEL_TYPES_H
#define PYTRACER_KERNEL_TYPES_H

#include <linux/types.h>

#define __pa __attribute__((preserve_access_index))

/* ---- constants (uapi values, stable forever) ---------------------------- */
#define AF_INET		2
#define AF_INET6	10

#define IPPROTO_HOPOPTS	0
#define IPPROTO_TCP	6
#define IPPROTO_ROUTING	43
#define IPPROTO_DSTOPTS	60

#define SOCK_STREAM	1

#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define ETH_HLEN	14

#define S_IFMT		00170000
#define S_IFSOCK	0140000

/* include/net/tcp_states.h; named so that tools can read the names from BTF */
enum tcp_state {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT,
	TCP_SYN_RECV,
	TCP_FIN_WAIT1,
	TCP_FIN_WAIT2,
	TCP_TIME_WAIT,
	TCP_CLOSE,
	TCP_CLOSE_WAIT,
	TCP_LAST_ACK,
	TCP_LISTEN,
	TCP_CLOSING,
	TCP_NEW_SYN_RECV,
};

/* TCP header flag bits (byte 13 of the header); an enum so that tools can read them from BTF */
enum tcp_flag {
	TH_FIN = 0x01,
	TH_SYN = 0x02,
	TH_RST = 0x04,
	TH_PSH = 0x08,
	TH_ACK = 0x10,
	TH_URG = 0x20,
	TH_ECE = 0x40,
	TH_CWR = 0x80,
};

/* ---- networking namespace ----------------------------------------------- */
struct ns_common {
	unsigned int inum;
} __pa;

struct net {
	struct ns_common ns;
} __pa;

/* A typedef of an anonymous struct in the kernel (include/net/net_namespace.h). */
typedef struct {
	struct net *net;
} __pa possible_net_t;

struct in6_addr {
	__u8 s6_addr[16];	/* kernel: union in6_u; only its size matters, we copy it whole */
} __pa;

/* ---- sockets -------------------------------------------------------------- */
struct sock_common {
	__be32 skc_daddr;		/* kernel: inside an anonymous union/struct */
	__be32 skc_rcv_saddr;		/* idem */
	__be16 skc_dport;		/* idem */
	__u16 skc_num;			/* idem; local port, host order */
	unsigned short skc_family;
	unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	unsigned long skc_flags;	/* 1 << enum sock_flags; recent kernels (6.18 has it), see sock___flags */
} __pa;

/* A typedef of an anonymous struct in the kernel (include/net/sock.h). */
typedef struct {
	int owned;			/* lock_sock() held by a task */
} __pa socket_lock_t;

struct socket;

struct sock {
	struct sock_common __sk_common;
	socket_lock_t sk_lock;
	__u16 sk_protocol;		/* u16 since 5.6; a bitfield before */
	__u16 sk_type;
	struct socket *sk_socket;	/* NULL until accept() gives the socket a file (and once orphaned) */
	int sk_err;			/* the error a failed connect() reports (ECONNREFUSED, ETIMEDOUT, ...) */
} __pa;

/* struct inet_sock starts with struct sock */
struct inet_sock {
	__be16 inet_sport;		/* local port, network order; unlike skc_num kept when the port is released at CLOSE */
} __pa;

/* Where the socket flags were before they moved into sock_common (5.10 .. 6.12 at least). */
struct sock___flags {
	unsigned long sk_flags;		/* 1 << enum sock_flags */
} __pa;

/* enum sock_flags: SOCK_DEAD, SOCK_DONE, ... (unchanged since 2.6) */
#define SOCK_DONE	1		/* TCP: the peer's FIN arrived (tcp_fin) */

struct socket {
	struct sock *sk;
} __pa;

/* A connection request (include/net/request_sock.h): its addresses and ports are a sock_common. */
struct request_sock {
	struct sock_common __req_common;
} __pa;

/* include/net/inet_connection_sock.h. The congestion state is a bitfield (6 bits on 5.10, 5 later): read
 * it with BPF_CORE_READ_BITFIELD_PROBED, whose shifts are relocated against the kernel's layout. */
struct inet_connection_sock {
	__u8 icsk_ca_state:5;		/* enum tcp_ca_state */
	__u8 icsk_pending;		/* the write timer's pending event: ICSK_TIME_* */
} __pa;

#define ICSK_TIME_LOSS_PROBE	5	/* include/net/inet_connection_sock.h (stable since 4.0) */
#define TCP_CA_Open		0

/* ---- files ------------------------------------------------------------------ */
struct inode {
	unsigned short i_mode;		/* umode_t */
} __pa;

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	long counter;
} atomic_long_t;

/* Linux 6.13+: a file's reference count; refcnt 0 means one reference (FILE_REF_ONEREF) */
typedef struct {
	atomic_long_t refcnt;
} file_ref_t;

struct file {
	void *private_data;
	struct inode *f_inode;
	atomic_long_t f_count;		/* up to 6.12 */
	file_ref_t f_ref;		/* 6.13+ */
} __pa;

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __pa;

struct files_struct {
	atomic_t count;			/* tasks sharing this fd table */
	struct fdtable *fdt;
} __pa;

/* ---- tasks, credentials, cgroups ---------------------------------------------- */
typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
} __pa;

struct kernfs_node {
	__u64 id;			/* the cgroup id bpf_get_current_cgroup_id() returns (5.5+) */
} __pa;

struct cgroup {
	struct kernfs_node *kn;
	int level;
} __pa;

/* The ancestors of a cgroup, by level: ids up to 6.0, pointers from 6.1 on. */
struct cgroup___ids {
	__u64 ancestor_ids[0];
} __pa;

struct cgroup___ptrs {
	struct cgroup *ancestors[0];
} __pa;

struct css_set {
	struct cgroup *dfl_cgrp;
} __pa;

struct task_struct {
	int tgid;			/* pid_t */
	struct files_struct *files;
	const struct cred *cred;
	struct css_set *cgroups;
	char comm[16];
} __pa;

/* ---- classic tracepoint contexts (/sys/kernel/tracing/events/<category>/<name>/format) ---- */
struct trace_event_raw_inet_sock_set_state {
	__u64 common;
	const void *skaddr;
	int oldstate, newstate;
	__u16 sport, dport, family, protocol;
	__u8 saddr[4], daddr[4], saddr_v6[16], daddr_v6[16];
};

/*
 * syscalls:sys_enter_<name> and sys_exit_<name> (include/trace/syscall.h): the
 * common header (8 bytes), the syscall number, then the arguments or the
 * return value, each 8 bytes at offset 16.
 */
struct syscall_trace_enter {
	__u64 common;
	__s32 nr;
	__s32 _pad;
	__u64 args[6];
};

struct syscall_trace_exit {
	__u64 common;
	__s32 nr;
	__s32 _pad;
	__s64 ret;
};

/* ---- BPF iterator contexts (kernel/bpf/task_iter.c, net/ipv4/tcp_ipv4.c) ------- */
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;		/* 0 for the first object of a run */
} __pa;

/* Every object pointer below is NULL in the one extra call the kernel makes after the last object. */
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __pa;

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} __pa;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;	/* a full sock, a request sock or a timewait sock */
	__u32 uid;			/* uid_t */
} __pa;

/* ---- packets ----------------------------------------------------------------- */
struct net_device {
	int ifindex;
	possible_net_t nd_net;
} __pa;

struct sk_buff {
	struct net_device *dev;		/* kernel: inside anonymous unions */
	struct sock *sk;
	unsigned int len;
	__be16 protocol;		/* kernel: inside the anonymous struct_group "headers" */
	__u16 transport_header;		/* idem */
	__u16 network_header;		/* idem */
	__u16 mac_header;		/* idem */
	unsigned int end;		/* sk_buff_data_t: an offset from head on 64-bit */
	unsigned char *head;
	unsigned char *data;
} __pa;

/* Lives at skb->head + skb->end (skb_shinfo()). */
struct skb_shared_info {
	unsigned short gso_size;
	unsigned short gso_segs;
} __pa;

/* Only ever used through a pointer (tp_btf/sys_enter's first argument). */
struct pt_regs;

/* ---- TCP socket state (struct tcp_sock starts with struct sock) ----------- */
struct tcp_sock {
	__u32 rcv_nxt;			/* next sequence number expected */
	__u32 srtt_us;			/* smoothed round trip time << 3, in microseconds (4.13+) */
	__u64 bytes_received;		/* RFC 4898 tcpEStatsAppHCThruOctetsReceived */
	__u64 bytes_acked;		/* RFC 4898 tcpEStatsAppHCThruOctetsAcked */
	__u32 snd_una;			/* first byte we want an ack for */
	__u32 write_seq;		/* tail(+1) of data held in the send buffer (our FIN included) */
} __pa;

/*
 * x86_64 views of pt_regs and thread_info, under ___flavor names so that
 * objects that only pass `struct pt_regs *` around keep it opaque.  The
 * relocations match the kernel's `struct pt_regs` / `struct task_struct`.
 */
struct pt_regs___x86 {
	unsigned long orig_ax;		/* the syscall number at sys_enter/sys_exit */
	unsigned long di;		/* first syscall argument */
	unsigned long dx;		/* third */
	unsigned long r10;		/* fourth */
} __pa;

struct thread_info___x86 {
	__u32 status;			/* TS_COMPAT: in a 32-bit (ia32) syscall */
} __pa;

struct task_struct___x86 {
	struct thread_info___x86 thread_info;
} __pa;

#define TS_COMPAT	0x0002

#undef __pa

#endif /* PYTRACER_KERNEL_TYPES_H */
