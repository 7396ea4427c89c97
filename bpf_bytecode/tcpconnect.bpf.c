// SPDX-License-Identifier: GPL-2.0
/*
 * tcpconnect.bpf.c - every active TCP open, named after the process that
 * called connect(), reported when its handshake ends: established, failed
 * with the kernel's error (sk_err: ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...),
 * or closed by the program first.
 *
 * The start and the outcome are sock:inet_sock_set_state (active_open.bpf.h).
 * A failure with no sk_err inside connect() itself (no free local port:
 * EADDRNOTAVAIL, ...) is reported at that connect()'s return, whose value is
 * the error (syscalls:sys_enter_connect / sys_exit_connect).
 *
 * inet_sock_set_state is tp_btf, not a classic tracepoint: a classic
 * program is skipped when it fires in softirq while another BPF program of
 * that kind runs on the CPU (trace_call_bpf), and most outcomes run in
 * softirq.  The syscall tracepoints run in process context, never nested.
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
#include "sock_addrs.bpf.h"
#include "active_open.bpf.h"
#include "tcpconnect.h"
#include "nest.bpf.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 20);
/* keep the record and the results in BTF, where user space reads them */
const struct tcpconnect_event *const __unused_event = 0;
const enum connect_result *const __unused_results = 0;

/*
 * Threads inside connect(): pid_tgid -> the socket that call moved to
 * SYN_SENT (0 until then).  LRU: an entry whose exit was never seen goes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, __u64);
} connect_calls SEC(".maps");

/* One record for `ao`'s connection with the addresses `a`; the caller deletes the entry. */
static __always_inline void emit(const struct active_open *ao, const struct sock_addrs *a,
				 __u8 result, __s32 error)
{
	struct tcpconnect_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return;
	}
	e->start_ns = ao->start_ns;
	e->end_ns = bpf_ktime_get_ns();
	e->pid = ao->o.pid;
	e->uid = ao->o.uid;
	e->netns = a->netns;
	e->error = error;
	e->lport = a->lport;
	e->rport = a->rport;
	__builtin_memcpy(e->laddr, a->laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, a->raddr, sizeof(e->raddr));
	__builtin_memcpy(e->comm, ao->o.comm, sizeof(e->comm));
	e->family = a->family;
	e->result = result;
	e->_pad[0] = e->_pad[1] = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int state_change(struct sock *sk, int oldstate, int newstate)
{
	struct active_open *ao;
	struct sock_addrs a;
	__u64 tid, skp = (__u64)sk;
	__u64 *call;
	__s32 err;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		active_open_begin(sk);
		tid = bpf_get_current_pid_tgid();
		call = bpf_map_lookup_elem(&connect_calls, &tid);
		ao = active_open_lookup(sk);
		if (call && ao) {
			*call = skp;
			ao->flags |= AO_IN_CONNECT;
		}
		return 0;
	}
	/* the end of a handshake: SYN_SENT, or SYN_RECV after a simultaneous open */
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		return 0;
	if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	ao = active_open_lookup(sk);
	if (!ao)
		return 0;
	read_sock_addrs(sk, &a);
	if (newstate == TCP_ESTABLISHED) {
		emit(ao, &a, CONNECT_ESTABLISHED, 0);
		active_open_end(sk);
		return 0;
	}
	err = BPF_CORE_READ(sk, sk_err);
	if (!err && (ao->flags & AO_IN_CONNECT) && ao->tid == bpf_get_current_pid_tgid()) {
		/*
		 * connect() itself gave up: its return value says why (see
		 * on_connect_exit).  Keep the addresses: on the way out it
		 * clears the remote port, and the local address if unbound.
		 */
		ao->addrs = a;
		ao->flags |= AO_CLOSED;
		return 0;
	}
	emit(ao, &a, err ? CONNECT_FAILED : CONNECT_CLOSED, err);
	active_open_end(sk);
	return 0;
}

/* connect() changes state with softirqs enabled, where a handshake ending can nest (nest.bpf.h) */
TP_BTF_NESTABLE(on_state, "inet_sock_set_state", sk, oldstate << 8 | newstate,
		state_change(sk, oldstate, newstate),
		struct sock *sk, int oldstate, int newstate)

SEC("tracepoint/syscalls/sys_enter_connect")
int on_connect_enter(struct syscall_trace_enter *ctx)
{
	__u64 tid = bpf_get_current_pid_tgid(), none = 0;

	bpf_map_update_elem(&connect_calls, &tid, &none, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int on_connect_exit(struct syscall_trace_exit *ctx)
{
	__u64 tid = bpf_get_current_pid_tgid();
	struct active_open *ao;
	__u64 *call, skp;
	__s32 err;

	call = bpf_map_lookup_elem(&connect_calls, &tid);
	if (!call)
		return 0;
	skp = *call;
	bpf_map_delete_elem(&connect_calls, &tid);
	if (!skp)
		return 0;
	ao = active_open_lookup((struct sock *)skp);
	if (!ao)
		return 0;
	ao->flags &= ~AO_IN_CONNECT;
	if (!(ao->flags & AO_CLOSED))
		return 0;
	err = ctx->ret < 0 ? (__s32)-ctx->ret : 0;
	emit(ao, &ao->addrs, err ? CONNECT_FAILED : CONNECT_CLOSED, err);
	active_open_end((struct sock *)skp);
	return 0;
}
