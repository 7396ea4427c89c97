// SPDX-License-Identifier: GPL-2.0
/*
 * tcpaccept.bpf.c - every TCP connection accept()/accept4() hands to a
 * process, named after that process.  The syscalls' exit tracepoints run
 * in the accepting task, so the owner is current there (the handshake
 * itself ran in softirq, on behalf of nobody); the returned descriptor
 * leads to the socket (fd.bpf.h) and the socket to the addresses.
 * The filters: the owner's (pid, uid, comm, cgroup), the family, and -P as
 * the local port (the listener's).
 * Not seen: accepts through io_uring (IORING_OP_ACCEPT makes no accept
 * syscall) and 32-bit (compat) accept calls, which these tracepoints miss.
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "filters.bpf.h"
#include "owner.bpf.h"
#include "fd.bpf.h"
#include "sock_addrs.bpf.h"
#include "tcpaccept.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 20);
/* keep the record in BTF, where user space reads it */
const struct tcpaccept_event *const __unused_event = 0;

static __always_inline int accepted(__s64 ret)
{
	struct tcpaccept_event *e;
	struct sock_addrs a;
	struct owner o;
	__u64 skp;

	if (ret < 0 || ret > 0x7fffffff)
		return 0;
	skp = fd_to_tcp_sk((__u32)ret);
	if (!skp)
		return 0;
	read_sock_addrs((struct sock *)skp, &a);
	if (!a.family || !family_pass(a.family) || !ports_pass(a.lport, a.lport))
		return 0;
	current_owner(&o);
	if (!owner_pass(&o))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = o.pid;
	e->uid = o.uid;
	e->netns = a.netns;
	e->lport = a.lport;
	e->rport = a.rport;
	__builtin_memcpy(e->laddr, a.laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, a.raddr, sizeof(e->raddr));
	__builtin_memcpy(e->comm, o.comm, sizeof(e->comm));
	e->family = a.family;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept4(struct syscall_trace_exit *ctx)
{
	return accepted(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int on_accept(struct syscall_trace_exit *ctx)
{
	return accepted(ctx->ret);
}
