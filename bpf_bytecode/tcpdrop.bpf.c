// SPDX-License-Identifier: GPL-2.0
/*
 * tcpdrop.bpf.c - TCP packets the kernel drops (skb:kfree_skb), with the
 * kernel stack and, where the tracepoint has it, the drop reason.
 *
 * kfree_skb fires for every packet freed as a drop, of every protocol: the
 * IPv4/IPv6 and TCP headers are read from the skb (head + network_header;
 * the transport header offset from the IP header, since it is not set yet
 * on every path) and anything else is left at once.  Three programs for the
 * tracepoint's three shapes; user space loads the one the kernel's BTF says:
 *   on_drop        (skb, location)                  before 5.17: no reason
 *   on_drop_reason (skb, location, reason)          5.17 - 6.10
 *   on_drop_rx_sk  (skb, location, reason, rx_sk)   6.11+: the receiving
 *                  socket, for drops before skb->sk is set (TCP's own)
 * tp_btf, so that a run is not skipped while another BPF program is active.
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "filters.bpf.h"
#include "tcp_sock.bpf.h"
#include "tcpdrop.h"

char LICENSE[] SEC("license") = "GPL";
EVENTS_RINGBUF(1 << 22);
/* keep the record and the names in BTF, where user space reads them */
const struct tcpdrop_event *const __unused_event = 0;
const enum tcp_state *const __unused_states = 0;
const enum tcp_flag *const __unused_flags = 0;

/* the reasons that are no drop (enum skb_drop_reason's SKB_NOT_DROPPED_YET, SKB_CONSUMED), from BTF */
const volatile __u32 not_drop_a = 0;
const volatile __u32 not_drop_b = 0;

#define IP_OFFSET_MASK	0x1fff
#define IPV6_MAX_EXT	4	/* extension headers walked before TCP */

struct packet {
	__u8 saddr[16], daddr[16];
	__u16 sport, dport;
	__u8 family, flags;
};

/* The TCP packet in `skb`, from its headers; 0 if it is no (first fragment of a) TCP packet. */
static __always_inline int read_packet(const struct sk_buff *skb, struct packet *p)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	unsigned char *l3, *l4;
	__u8 th[14];

	if (!head || nh == (__u16)~0U)
		return 0;
	l3 = head + nh;
	if (proto == ETH_P_IP) {
		__u8 iph[20];

		if (bpf_probe_read_kernel(iph, sizeof(iph), l3))
			return 0;
		if ((iph[0] >> 4) != 4 || (iph[0] & 0xf) < 5 || iph[9] != IPPROTO_TCP ||
		    (((iph[6] << 8) | iph[7]) & IP_OFFSET_MASK))
			return 0;
		p->family = AF_INET;
		__builtin_memcpy(p->saddr, iph + 12, 4);
		__builtin_memcpy(p->daddr, iph + 16, 4);
		l4 = l3 + (iph[0] & 0xf) * 4;
	} else if (proto == ETH_P_IPV6) {
		__u8 ip6h[40], ext[2];
		__u8 next;

		if (bpf_probe_read_kernel(ip6h, sizeof(ip6h), l3) || (ip6h[0] >> 4) != 6)
			return 0;
		p->family = AF_INET6;
		__builtin_memcpy(p->saddr, ip6h + 8, 16);
		__builtin_memcpy(p->daddr, ip6h + 24, 16);
		next = ip6h[6];
		l4 = l3 + 40;
		for (int i = 0; i < IPV6_MAX_EXT && next != IPPROTO_TCP; i++) {
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS)
				return 0;
			if (bpf_probe_read_kernel(ext, sizeof(ext), l4))
				return 0;
			next = ext[0];
			l4 += (ext[1] + 1) * 8;
		}
		if (next != IPPROTO_TCP)
			return 0;
	} else {
		return 0;
	}
	if (bpf_probe_read_kernel(th, sizeof(th), l4))
		return 0;
	p->sport = (th[0] << 8) | th[1];
	p->dport = (th[2] << 8) | th[3];
	p->flags = th[13];
	return 1;
}

static __always_inline int on_free(void *ctx, const struct sk_buff *skb, __u32 reason, const struct sock *rx_sk)
{
	struct tcpdrop_event *e;
	const struct sock *sk;
	struct packet p = {};
	__u8 state = 0;

	if (reason == not_drop_a || reason == not_drop_b)
		return 0;
	if (!read_packet(skb, &p) || !family_pass(p.family) || !ports_pass(p.sport, p.dport))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	sk = BPF_CORE_READ(skb, sk);
	if (!sk)
		sk = rx_sk;
	if (sk) {
		state = BPF_CORE_READ(sk, __sk_common.skc_state);
		/* request and TIME_WAIT sockets are only a sock_common: no lock to look at */
		if (state != TCP_NEW_SYN_RECV && state != TCP_TIME_WAIT)
			e->pid = lock_holder(sk, e->comm);
	}
	e->stack_bytes = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	e->reason = reason;
	e->sport = p.sport;
	e->dport = p.dport;
	__builtin_memcpy(e->saddr, p.saddr, 16);
	__builtin_memcpy(e->daddr, p.daddr, 16);
	e->family = p.family;
	e->state = state;
	e->tcpflags = p.flags;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_drop, const struct sk_buff *skb, void *location)
{
	return on_free(ctx, skb, DROP_REASON_UNKNOWN, 0);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_drop_reason, const struct sk_buff *skb, void *location, int reason)
{
	return on_free(ctx, skb, (__u32)reason, 0);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_drop_rx_sk, const struct sk_buff *skb, void *location, int reason, const struct sock *rx_sk)
{
	return on_free(ctx, skb, (__u32)reason, rx_sk);
}
