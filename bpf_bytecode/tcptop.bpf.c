// SPDX-License-Identifier: GPL-2.0
/*
 * tcptop.bpf.c - bytes sent and received per (owner, connection), counted in
 * the kernel at sock:sock_send_length / sock_recv_length (Linux 6.3+), so the
 * cost is per system call and not per line printed.  The owner is
 * sockowner.bpf.h's: these programs take the place of its on_send_len /
 * on_recv_len (they refresh the owner the same way, then count).  Before 6.3
 * the same calls are counted between syscall entry and exit (top_sys_enter /
 * top_sys_exit, in place of fb_sys_enter).
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "filters.bpf.h"
#include "tcptop.h"

char LICENSE[] SEC("license") = "GPL";

#include "sockowner.bpf.h"	/* no members of our own */

#define MSG_PEEK	2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tcptop_key);
	__type(value, struct tcptop_value);
} top SEC(".maps");

/* (owner, connection) pairs that found `top` full: their bytes are not counted */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} top_full SEC(".maps");

const struct tcptop_key *const __unused_key = 0;
const struct tcptop_value *const __unused_value = 0;

static __always_inline void sockowner_on_tuple(const struct tuple *t)
{
}

static __always_inline void sockowner_on_owner(__u64 skp, struct sock_info *si, struct owner *o,
					       int first, int was_unknown)
{
	publish_owner(si, o);
}

static __always_inline void sockowner_on_close(__u64 skp, struct sock_info *si, int oldstate)
{
}

/* counted after handle_sock_length() or syscall_entry_owner() refreshed the owner */
static __always_inline void count_io(__u64 skp, long ret, int sent)
{
	struct tcptop_value fresh, *v;
	struct tcptop_key k;
	struct sock_info *si;
	__u32 zero = 0;
	__u64 *full;

	if (ret <= 0)
		return;
	si = bpf_map_lookup_elem(&socks, &skp);
	if (!si || !(si->o.flags & SI_OWNER_KNOWN) || !(si->state_flags & SI_TUPLE_SET))
		return;
	if (!owner_pass(&si->o) || !family_pass(si->tuple.family) ||
	    !ports_pass(si->tuple.lport, si->tuple.rport))
		return;
	__builtin_memset(&k, 0, sizeof(k));
	k.pid = si->o.pid;
	k.netns = si->tuple.netns;
	k.lport = si->tuple.lport;
	k.rport = si->tuple.rport;
	k.family = si->tuple.family;
	__builtin_memcpy(k.laddr, si->tuple.laddr, sizeof(k.laddr));
	__builtin_memcpy(k.raddr, si->tuple.raddr, sizeof(k.raddr));
	v = bpf_map_lookup_elem(&top, &k);
	if (!v) {
		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.uid = si->o.uid;
		__builtin_memcpy(fresh.comm, si->o.comm, sizeof(fresh.comm));
		bpf_map_update_elem(&top, &k, &fresh, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&top, &k);
		if (!v) {
			full = bpf_map_lookup_elem(&top_full, &zero);
			if (full)
				__sync_fetch_and_add(full, 1);
			return;
		}
	}
	if (sent)
		__sync_fetch_and_add(&v->tx_bytes, ret);
	else
		__sync_fetch_and_add(&v->rx_bytes, ret);
}

/* args: (struct sock *sk, int ret, int flags); raw_tracepoint, as in sockowner.bpf.h (absent before 6.3) */
SEC("raw_tracepoint/sock_send_length")
int BPF_PROG(top_send, struct sock *sk, int ret, int flags)
{
	handle_sock_length((__u64)sk);	/* current owns it now (sockowner.bpf.h) */
	count_io((__u64)sk, ret, 1);
	return 0;
}

SEC("raw_tracepoint/sock_recv_length")
int BPF_PROG(top_recv, struct sock *sk, int ret, int flags)
{
	handle_sock_length((__u64)sk);
	if (!(flags & MSG_PEEK))
		count_io((__u64)sk, ret, 0);
	return 0;
}

/* ---- before 6.3: the calls sock_*_length would see, from syscall entry to exit ---------- */
struct io_call {
	__u64 skp;
	__u32 sent;
	__u32 _pad;
};

/* the read/write/send/recv call each thread is in, by pid_tgid (LRU: a thread that never returns
 * from one does not keep its entry) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct io_call);
} io_calls SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(top_sys_enter, struct pt_regs *regs, long id)
{
	struct pt_regs___x86 *r = (struct pt_regs___x86 *)regs;
	__u64 tid = bpf_get_current_pid_tgid();
	struct io_call c = {};
	__u64 flags = 0;

	c.skp = syscall_entry_owner(regs, id);
	if (!c.skp)
		return 0;
	switch (id) {
	case NR_write: case NR_writev: case NR_sendto: case NR_sendmsg:
		c.sent = 1;
		break;
	case NR_recvfrom:
		flags = r->r10;
		break;
	case NR_recvmsg:
		flags = r->dx;
		break;
	}
	if (flags & MSG_PEEK)
		return 0;
	bpf_map_update_elem(&io_calls, &tid, &c, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(top_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct io_call *c = bpf_map_lookup_elem(&io_calls, &tid);
	struct io_call done;

	if (!c)
		return 0;
	done = *c;
	bpf_map_delete_elem(&io_calls, &tid);
	count_io(done.skp, ret, done.sent);
	return 0;
}
