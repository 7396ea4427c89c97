// SPDX-License-Identifier: GPL-2.0
/* tcpstates.bpf.c - every TCP state change (sock:inet_sock_set_state), filtered by port and family */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "channel.h"
#include "filters.bpf.h"
#include "tcpstates.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 20);
/* keep the record and the state names in BTF, where user space reads them */
const struct tcpstates_event *const __unused_event = 0;
const enum tcp_state *const __unused_states = 0;

SEC("tracepoint/sock/inet_sock_set_state")
int on_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u8 v4 = ctx->family == AF_INET;
	struct tcpstates_event *e;

	if (ctx->protocol != IPPROTO_TCP || !family_pass(v4 ? AF_INET : AF_INET6) ||
	    !ports_pass(ctx->sport, ctx->dport))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->lport = ctx->sport;
	e->rport = ctx->dport;
	if (v4) {
		__builtin_memcpy(e->laddr, ctx->saddr, 4);
		__builtin_memcpy(e->raddr, ctx->daddr, 4);
	} else {
		__builtin_memcpy(e->laddr, ctx->saddr_v6, 16);
		__builtin_memcpy(e->raddr, ctx->daddr_v6, 16);
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->family = v4 ? AF_INET : AF_INET6;
	e->oldstate = ctx->oldstate;
	e->newstate = ctx->newstate;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
