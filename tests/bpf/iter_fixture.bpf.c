// SPDX-License-Identifier: GPL-2.0
/*
 * BPF iterator fixture for tests/test_iterator.py (built by the test with clang-16; not package data).
 *
 * Four iterator programs and, in the same object, the three tracepoint flavours, so that the tests see
 * iterators load, run and stay out of BPFObject.attach() next to ordinary programs:
 *   count_tasks   iter/task       only updates a map (its output is empty)
 *   list_tasks    iter/task       one text line per task (bpf_seq_printf)
 *   socket_fds    iter/task_file  one text line per socket fd of the process target_tgid (0: of every
 *                                 process; bench/iterator.py times that)
 *   tcp_sockets   iter/tcp        one binary struct tcp_record per TCP socket (bpf_seq_write)
 *
 * Kernel types, the iterator contexts among them, come from bpf_bytecode/kernel_types.h (CO-RE,
 * preserve_access_index).
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define __pa __attribute__((preserve_access_index))

/* More of task_struct than kernel_types.h declares, under a flavour name (CO-RE matches task_struct). */
struct task_struct___iter {
	int pid;
	int tgid;
	char comm[16];
} __pa;

#undef __pa

/* the binary record of tcp_sockets; tests/test_iterator.py decodes it with struct "<HHHBBI" */
struct tcp_record {
	__u16 family;
	__u16 lport;		/* host order */
	__u16 dport;		/* host order */
	__u8 state;
	__u8 pad;
	__u32 uid;
};

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

/* count_tasks: [0] tasks (threads), [1] of which thread-group leaders (processes) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} task_counts SEC(".maps");

/* the tracepoint programs: getppid calls by target_tgid, [0] tracepoint, [1] tp_btf, [2] raw_tp */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} getppid_calls SEC(".maps");

static __always_inline void bump(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("iter/task")
int count_tasks(struct bpf_iter__task *ctx)
{
	struct task_struct___iter *task = (void *)ctx->task;

	if (!task)
		return 0;
	bump(&task_counts, 0);
	if (task->pid == task->tgid)
		bump(&task_counts, 1);
	return 0;
}

SEC("iter/task")
int list_tasks(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct___iter *task = (void *)ctx->task;

	if (!task)
		return 0;
	if (ctx->meta->seq_num == 0)
		BPF_SEQ_PRINTF(seq, "tgid pid comm\n");
	BPF_SEQ_PRINTF(seq, "%d %d %s\n", task->tgid, task->pid, task->comm);
	return 0;
}

SEC("iter/task_file")
int socket_fds(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct socket *sock;
	struct sock *sk;

	if (!task || !file || (target_tgid && task->tgid != target_tgid))
		return 0;
	if ((file->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	/* private_data is a void * to the verifier (a scalar), so the socket is read with probes */
	sock = file->private_data;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	BPF_SEQ_PRINTF(seq, "%d %u %u %u %u\n", task->tgid, ctx->fd,
		       BPF_CORE_READ(sk, __sk_common.skc_family), BPF_CORE_READ(sk, __sk_common.skc_num),
		       BPF_CORE_READ(sk, __sk_common.skc_state));
	return 0;
}

SEC("iter/tcp")
int tcp_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_record rec = {};

	if (!skc)
		return 0;
	rec.family = skc->skc_family;
	rec.lport = skc->skc_num;
	rec.dport = bpf_ntohs(skc->skc_dport);
	rec.state = skc->skc_state;
	rec.uid = ctx->uid;
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* ---- ordinary programs in the same object ---------------------------------------------------------- */
static __always_inline int mine(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_getppid(void *ctx)
{
	if (mine())
		bump(&getppid_calls, 0);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_sys_enter, struct pt_regs *regs, long id)
{
	if (mine() && id == 110)	/* __NR_getppid on x86_64 */
		bump(&getppid_calls, 1);
	return 0;
}

SEC("raw_tracepoint/sys_enter")
int raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	if (mine() && ctx->args[1] == 110)
		bump(&getppid_calls, 2);
	return 0;
}

#ifdef MISSING_TARGET
/* an iterator target no kernel registers: loading this program must fail with KernelFeatureError */
SEC("iter/pytracer_no_such_target")
int no_such_target(struct bpf_iter__task *ctx)
{
	return 0;
}
#endif
