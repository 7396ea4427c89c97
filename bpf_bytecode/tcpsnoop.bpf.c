// SPDX-License-Identifier: GPL-2.0
/*
 * tcpsnoop.bpf.c - TCP packets by process, from tracepoints only.
 *
 * Design (details and the facts it rests on: docs/bpf-design.md):
 *   - `socks` maps a kernel socket address to what we know about it: its
 *     owner (the last process seen using it), byte counters and sequence
 *     state.  Owners are learnt in process context (connect, accept,
 *     send/recv) and *used* in any context, so packets handled in softirq
 *     are attributed and filtered correctly.
 *   - `tuples` maps the connection's addresses as seen on the wire (per
 *     network namespace) back to the socket, because a received skb does not
 *     carry its socket yet when netif_receive_skb fires.
 *   - Every packet is seen at the device, where taps (tcpdump) see it:
 *     net_dev_start_xmit (sent: after the device layer split GSO skbs it
 *     cannot send whole) and netif_receive_skb (received), both as tp_btf so
 *     the skb is typed.  A packet of no socket we know is either a passive
 *     handshake's (EV_HANDSHAKE, named once the connection is accepted), a
 *     TIME_WAIT connection's (`tw`), or counted in `unattributed`.
 *   - Sockets that exist when the tracer starts are registered by two BPF
 *     iterators before the first record is read: task_file (with the process
 *     holding each) and tcp (the rest, owner unknown).
 *   - The owner is the process that last did I/O on the socket while holding
 *     it.  When the owner closes its descriptor (or exits) while others still
 *     hold the socket, the owner becomes unknown: records are held in user
 *     space until the next holder does I/O (EV_OWNER names it).
 *   - No classic (perf) tracepoint programs: those run through
 *     trace_call_bpf(), which silently skips a run while any other
 *     kprobe/tracepoint program is active on the CPU (a state change in
 *     softirq interrupting our send hook in process context was lost).
 *     tp_btf and raw_tracepoint programs only guard against recursion of the
 *     same program.
 */
#include "kernel_types.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "channel.h"
#include "tcpsnoop.h"
#include "capture.bpf.h"	/* -w: the packet bytes behind a record */

char LICENSE[] SEC("license") = "GPL";

#define MAX_IPV6_EXT_HDRS	4

/* ---- settings, written by Python into .rodata before load ----------------- */
#include "filters.bpf.h"	/* the common filters' settings and checks */
#include "fd.bpf.h"		/* a descriptor -> its file -> its TCP socket */
const volatile __u8 no_data = 0;	/* no EV_SEND/EV_RECV records; bytes still counted */

/* ---- maps ---------------------------------------------------------------------- */
struct tuple {
	__u32 netns;
	__u16 lport;		/* host order */
	__u16 rport;
	__u8 family;		/* as on the wire: a v4-mapped AF_INET6 socket is AF_INET */
	__u8 _pad[3];
	__u8 laddr[16];
	__u8 raddr[16];
};

/* owner.flags (owner.bpf.h: SI_OWNER_KNOWN, SI_CGROUP_MATCH), written in process context only
 * (publish_owner) */
#define SI_ACCEPT_SHOWN	0x04	/* EV_ACCEPT went out: its lines are printed once (see adopt) */
/* tx_flags: written on the transmit path only (serialised per socket) */
#define SI_TX_SEQ_INIT	0x01
#define SI_TUPLE_WIRE	0x02	/* tuple was taken from a sent packet */
/* rx_flags: written on the receive path only */
#define SI_RX_SEQ_INIT	0x01
/* state_flags: written at creation and by the state/close handler */
#define SI_TUPLE_SET	0x01	/* `tuple` holds a key we inserted into `tuples` */
#define SI_CLOSED	0x02	/* reached TCP_CLOSE; kept until destroy for a trailing RST */
#define SI_TIME_WAIT	0x04	/* closed into TIME_WAIT: a copy lives on in `tw` */
#define SI_PASSIVE	0x08	/* a listener's child, registered when it was created */
#define SI_ESTABLISHED	0x10	/* passive child: reached ESTABLISHED */

/*
 * The flags are split by writer instead of one word so that contexts that
 * update an entry in place concurrently (a process refreshing the owner while
 * softirq counts a received segment) never clobber each other's bits without
 * needing atomics.
 */
#include "owner.bpf.h"	/* struct owner, owner_pass(), current_owner() */

struct sock_info {
	__u64 start_ns;		/* 0 = connection predates the tracer */
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 sk;		/* the socket (in `tw`: the one that went to TIME_WAIT) */
	struct owner o;
	__u32 tx_max_end;	/* highest sequence number (exclusive) of payload sent */
	__u32 rx_max_end;	/* idem received */
	__u32 tx_hole[2];	/* [start, end): sequence numbers skipped by a later segment, not seen yet */
	__u32 rx_hole[2];	/* idem received (segments reordered between CPUs before netif_receive_skb) */
	__u32 netns;
	__u32 syn_data;		/* passive TCP Fast Open: payload bytes the SYN carried */
	__u8 tx_flags;
	__u8 rx_flags;
	__u8 state_flags;
	__u8 _pad;
	struct tuple tuple;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, __u64);
} tuples SEC(".maps");

/*
 * Connections closed into TIME_WAIT, by tuple: their last segments (the
 * peer's FIN, our final ACK) are sent/received by the TIME_WAIT mini-socket
 * after the full socket is gone, and that socket's address may be reused at
 * once by a new connection, so the copy is keyed by the 4-tuple, never by the
 * freed pointer.  A new connection on the same tuple removes it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct tuple);
	__type(value, struct sock_info);
} tw SEC(".maps");

/*
 * Passive connections whose SYN-ACK went out from a request socket, by tuple:
 * the ACK (or data) that completes the handshake arrives before the child
 * socket is in `tuples`, and belongs to the handshake.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tuple);
	__type(value, __u8);
} halfopen SEC(".maps");

/* Segments of no socket we know (not a handshake, not TIME_WAIT): counted, never dropped silently. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unattributed SEC(".maps");

EVENTS_RINGBUF(8 << 20);

/* Keep the record and the enums in the object's BTF: user space builds its decoder and reads its
 * constants from there (pytracer/records.py). */
const struct tcpsnoop_event *const __unused_event = 0;
const struct tcpsnoop_enums *const __unused_enums = 0;

#include "syscall_nr.bpf.h"	/* NR_read, NR_write, ... of the target architecture */

/* ---- a parsed segment ------------------------------------------------------ */
struct pkt {
	struct tuple t;		/* from our side: local/remote */
	__u32 seq;
	__u32 size;		/* wire size: IP packet + 14 */
	__u32 payload;
	__u16 gso_segs;
	__u16 gso_size;
	__u8 flags;		/* TCP flags byte */
	__u8 cap_slot;		/* -w: capture_scratch slot + 1 holding this packet's source (0: none) */
	__u16 hdr_len;		/* IP + TCP header bytes (options included) */
};

/* ---- small helpers --------------------------------------------------------- */
/*
 * Stores an owner into an entry, the flags last: a reader that sees
 * SI_OWNER_KNOWN of a formerly unknown owner sees its fields (x86 keeps
 * stores in order; the barrier keeps the compiler from reordering them).
 */
static __always_inline void publish_owner(struct sock_info *si, const struct owner *o)
{
	si->o.cgroup_id = o->cgroup_id;
	__builtin_memcpy(si->o.comm, o->comm, sizeof(si->o.comm));
	si->o.pid = o->pid;
	si->o.uid = o->uid;
	asm volatile("" ::: "memory");
	si->o.flags = o->flags | (si->o.flags & SI_ACCEPT_SHOWN);
}

/* A consistent copy of an entry's owner, taken before a record is reserved (see adopt). */
static __always_inline void snapshot_owner(const struct sock_info *si, struct owner *o)
{
	o->flags = si->o.flags;
	asm volatile("" ::: "memory");
	o->cgroup_id = si->o.cgroup_id;
	__builtin_memcpy(o->comm, si->o.comm, sizeof(o->comm));
	o->pid = si->o.pid;
	o->uid = si->o.uid;
}

static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/*
 * The connection's tuple from its socket (local = the socket's side).  An
 * AF_INET6 socket talking to a v4-mapped peer sends IPv4 packets, so its tuple
 * is AF_INET to match what the wire shows.  Returns 0 if the socket has no
 * usable tuple yet (e.g. no local port before connect() picked one).
 */
static __always_inline int tuple_from_sk(__u64 skp, struct tuple *t)
{
	struct sock *sk = (struct sock *)skp;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(t, 0, sizeof(*t));
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	t->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		t->family = AF_INET;
		bpf_core_read(t->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(t->raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		bpf_core_read(t->raddr, 16, &sk->__sk_common.skc_v6_daddr);
		if (is_v4_mapped(t->raddr)) {
			__builtin_memset(t->raddr, 0, sizeof(t->raddr));
			t->family = AF_INET;
			bpf_core_read(t->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_core_read(t->raddr, 4, &sk->__sk_common.skc_daddr);
		} else {
			t->family = AF_INET6;
			bpf_core_read(t->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		}
	} else {
		return 0;
	}
	return t->lport != 0 && t->rport != 0;
}

static __always_inline int tuple_equal(const struct tuple *a, const struct tuple *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	for (int i = 0; i < (int)(sizeof(*a) / 4); i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* Deletes `t` from `tuples` only if it still points at this socket. */
static __always_inline void tuple_release(const struct tuple *t, __u64 skp)
{
	__u64 *owner = bpf_map_lookup_elem(&tuples, t);

	if (owner && *owner == skp)
		bpf_map_delete_elem(&tuples, t);
}

/*
 * Adds a segment's payload to a byte counter, counting each sequence number
 * once: only bytes beyond the highest end seen so far are new, so
 * retransmissions (and duplicates) add nothing.  A SYN occupies one sequence
 * number before its data.  A segment that jumps ahead leaves a hole (the last
 * one is remembered): a segment that arrives later inside it counts too, so
 * reordering (received skbs processed on two CPUs) loses nothing.  Returns
 * the number of new bytes.
 */
static __always_inline __u32 count_new(__u8 *flags, __u8 init_bit, __u32 *max_end, __u32 *hole,
				       __u64 *total, __u32 seq, __u32 payload, __u8 tcp_flags)
{
	__u32 start = seq + ((tcp_flags & TH_SYN) ? 1 : 0);
	__u32 end = start + payload;
	__s32 ahead;

	if (!(*flags & init_bit)) {
		*max_end = start;
		hole[0] = hole[1] = start;
		*flags |= init_bit;
	}
	ahead = (__s32)(end - *max_end);
	if (ahead <= 0) {
		/* old, unless it falls into the hole */
		__u32 s = (__s32)(start - hole[0]) > 0 ? start : hole[0];
		__u32 e = (__s32)(end - hole[1]) < 0 ? end : hole[1];
		__s32 n = (__s32)(e - s);

		if (hole[0] == hole[1] || n <= 0)
			return 0;
		if (s == hole[0])
			hole[0] = e;	/* filled from its start (or whole) */
		else
			hole[1] = s;	/* the part before stays a hole; what is after it is forgotten */
		*total += n;
		return n;
	}
	if ((__u32)ahead > payload) {	/* a gap: remember it, count this segment only */
		hole[0] = *max_end;
		hole[1] = start;
		ahead = payload;
	}
	*max_end = end;
	*total += ahead;
	return ahead;
}

/* ---- the record ------------------------------------------------------------- */
static __always_inline void fill_event(struct tcpsnoop_event *e, __u64 skp,
				       const struct sock_info *si, const struct owner *o,
				       const struct pkt *p, __u8 type, __u8 dir, __u8 attr)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->sk = skp;
	e->netns = p->t.netns;
	e->size = p->size;
	e->payload = p->payload;
	e->lport = p->t.lport;
	e->rport = p->t.rport;
	__builtin_memcpy(e->laddr, p->t.laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, p->t.raddr, sizeof(e->raddr));
	e->family = p->t.family;
	e->type = type;
	e->dir = dir;
	e->tcp_flags = p->flags;
	e->gso_segs = p->gso_segs;
	e->gso_size = p->gso_size;
	if (si) {
		e->start_ns = si->start_ns;
		e->tx_bytes = si->tx_bytes;
		e->rx_bytes = si->rx_bytes;
		if (o->flags & SI_OWNER_KNOWN) {
			e->cgroup_id = o->cgroup_id;
			e->pid = o->pid;
			e->uid = o->uid;
			__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
		} else {
			attr |= ATTR_OWNER_UNKNOWN;
		}
	}
	e->attr = attr;
}

/*
 * One record for a segment/close of `si` (or, si NULL, of no socket), if
 * the owner passes the filters.  The owner is read *before* the record is
 * reserved: adopt() reserves its EV_ACCEPT before it publishes a new owner,
 * so a record named after that owner always follows the EV_ACCEPT in the ring.
 */
static __always_inline void emit(__u64 skp, const struct sock_info *si, const struct pkt *p,
				 __u8 type, __u8 dir, __u8 attr)
{
	struct tcpsnoop_event *e;
	struct owner o;
	__u64 cap;

	__builtin_memset(&o, 0, sizeof(o));
	if (si) {
		snapshot_owner(si, &o);
		if (!owner_pass(&o))
			return;
	}
	cap = capture_packet(p->cap_slot, p->t.netns, p->hdr_len);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	fill_event(e, skp, si, &o, p, type, dir, attr);
	e->capture = cap;
	bpf_ringbuf_submit(e, 0);
}

/* ---- packet parsing ---------------------------------------------------------- */
/*
 * Parses the IPv4/IPv6 + TCP headers at `nh`.  `ip_len` is the number of
 * bytes from the network header to the end of the skb (the whole GSO/GRO
 * super-packet).  Fills the tuple as src -> dst; the caller flips it for
 * received packets.  Returns 0 for a TCP segment, -1 otherwise.
 */
static __always_inline int parse_ip_tcp(const unsigned char *nh, __u32 ip_len, __u16 l3proto,
					struct pkt *p)
{
	union {
		__u8 b[40];
		__u32 w[10];
	} ip;
	__u8 th[20];
	__u32 th_off;

	if (l3proto != bpf_htons(ETH_P_IP) && l3proto != bpf_htons(ETH_P_IPV6))
		return -1;
	if (bpf_probe_read_kernel(&ip, 20, nh))
		return -1;
	if (l3proto == bpf_htons(ETH_P_IP)) {
		if ((ip.b[0] >> 4) != 4 || ip.b[9] != IPPROTO_TCP)
			return -1;
		if (((ip.b[6] << 8) | ip.b[7]) & 0x1fff)	/* a non-first fragment */
			return -1;
		th_off = (ip.b[0] & 0x0f) * 4;
		if (th_off < 20)
			return -1;
		p->t.family = AF_INET;
		__builtin_memcpy(p->t.laddr, &ip.w[3], 4);
		__builtin_memcpy(p->t.raddr, &ip.w[4], 4);
	} else {	/* ETH_P_IPV6 */
		__u8 next;

		if (bpf_probe_read_kernel(&ip.b[20], 20, nh + 20))
			return -1;
		if ((ip.b[0] >> 4) != 6)
			return -1;
		next = ip.b[6];
		th_off = 40;
		/* BIG TCP's hop-by-hop jumbo header, or options a socket asked for */
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT_HDRS; i++) {
			__u8 ext[2];

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS)
				break;
			if (bpf_probe_read_kernel(ext, 2, nh + th_off))
				return -1;
			next = ext[0];
			th_off += (ext[1] + 1) * 8;
		}
		if (next != IPPROTO_TCP)
			return -1;
		p->t.family = AF_INET6;
		__builtin_memcpy(p->t.laddr, &ip.b[8], 16);
		__builtin_memcpy(p->t.raddr, &ip.b[24], 16);
	}
	if (bpf_probe_read_kernel(th, sizeof(th), nh + th_off))
		return -1;
	p->t.lport = (th[0] << 8) | th[1];
	p->t.rport = (th[2] << 8) | th[3];
	p->seq = ((__u32)th[4] << 24) | ((__u32)th[5] << 16) | ((__u32)th[6] << 8) | th[7];
	p->flags = th[13];
	th_off += (th[12] >> 4) * 4;
	p->hdr_len = th_off;
	p->payload = ip_len > th_off ? ip_len - th_off : 0;
	p->size = ip_len + ETH_HLEN;
	return 0;
}

static __always_inline void read_gso(struct sk_buff *skb, const unsigned char *head,
				     struct pkt *p)
{
	struct skb_shared_info *shinfo = (struct skb_shared_info *)(head + skb->end);
	__u16 size = BPF_CORE_READ(shinfo, gso_size);
	__u16 segs = BPF_CORE_READ(shinfo, gso_segs);

	p->gso_size = size;
	p->gso_segs = (size && segs) ? segs : 1;
}

static __always_inline void flip(struct tuple *t)
{
	__u8 a[16];
	__u16 port = t->lport;

	t->lport = t->rport;
	t->rport = port;
	__builtin_memcpy(a, t->laddr, 16);
	__builtin_memcpy(t->laddr, t->raddr, 16);
	__builtin_memcpy(t->raddr, a, 16);
}

/* ---- entries -------------------------------------------------------------------- */
static __always_inline void insert_tuple(struct sock_info *si, __u64 skp)
{
	/* a live connection on this tuple ends a TIME_WAIT predecessor's */
	bpf_map_delete_elem(&tw, &si->tuple);
	if (bpf_map_update_elem(&tuples, &si->tuple, &skp, BPF_ANY) == 0)
		si->state_flags |= SI_TUPLE_SET;
}

/*
 * A fresh entry on the stack: owner from current if `owned`; tuple from the
 * socket if `with_tuple` (SI_TUPLE_SET then means "insert me", see insert_tuple).
 */
static __always_inline void init_entry(struct sock_info *si, __u64 skp, int owned,
				       int with_tuple, __u64 start_ns)
{
	__builtin_memset(si, 0, sizeof(*si));
	si->start_ns = start_ns;
	si->sk = skp;
	if (owned)
		current_owner(&si->o);
	if (with_tuple && tuple_from_sk(skp, &si->tuple))
		si->state_flags |= SI_TUPLE_SET;
	else
		__builtin_memset(&si->tuple, 0, sizeof(si->tuple));
	si->netns = si->tuple.netns;
}

static __always_inline void tuple_to_pkt(const struct tuple *t, struct pkt *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->t = *t;
	p->gso_segs = 1;
}

static __always_inline __u8 sk_state(__u64 skp)
{
	return BPF_CORE_READ((struct sock *)skp, __sk_common.skc_state);
}

/*
 * An entry marked closed whose socket is alive again: the address was freed
 * and reused by a new socket and we missed the old one's destroy.  It must
 * not lend its owner (or counters) to the new socket.
 */
static __always_inline int stale(__u64 skp, const struct sock_info *si)
{
	return (si->state_flags & SI_CLOSED) && sk_state(skp) != TCP_CLOSE;
}

/*
 * Receive accounting of a passive socket starts from what TCP has already
 * accepted: the payload of a TCP Fast Open SYN (or of the handshake's last
 * ACK) reached the socket before any received skb could be matched to it.
 */
static __always_inline void seed_rx(__u64 skp, struct sock_info *si)
{
	struct tcp_sock *tp = (struct tcp_sock *)skp;

	si->rx_max_end = BPF_CORE_READ(tp, rcv_nxt);
	si->rx_bytes = BPF_CORE_READ(tp, bytes_received);
	si->rx_flags |= SI_RX_SEQ_INIT;
}

/*
 * Makes `current` the owner of an existing entry (process context only).  An
 * owner that was unknown is thereby resolved: a passive socket not shown yet
 * with EV_ACCEPT (Python prints the handshake and flushes the records it held
 * back), any other with EV_OWNER (Python flushes them under the new owner);
 * either with ATTR_DISCARD if the owner fails the filters.  `accepted` (from
 * accept()) reports EV_ACCEPT once.
 *
 * Order: the EV_ACCEPT record is reserved *before* the new owner is
 * published.  Every other record snapshots the owner before reserving (see
 * emit), so one that carries the new owner was reserved after the EV_ACCEPT
 * and follows it in the ring: no line of the connection is named before its
 * accept lines.  (One that still saw the old "unknown" owner may follow too;
 * Python holds it and flushes it with the owner.)
 */
static __always_inline void adopt(__u64 skp, struct sock_info *si, int accepted)
{
	int was_unknown = !(si->o.flags & SI_OWNER_KNOWN);
	int shown = si->o.flags & SI_ACCEPT_SHOWN;
	struct tcpsnoop_event *e;
	struct owner o;
	struct pkt p;
	__u8 type, attr = 0;

	current_owner(&o);
	if (!(si->state_flags & SI_TUPLE_SET) && tuple_from_sk(skp, &si->tuple)) {
		si->netns = si->tuple.netns;
		insert_tuple(si, skp);
	}
	/*
	 * EV_ACCEPT once per connection: accept() itself can adopt first, when
	 * releasing the new socket's lock sends an ACK for data that arrived
	 * meanwhile (adopt_if_locked), and its syscall exit adopts again.
	 */
	if (!was_unknown && (!accepted || shown)) {
		publish_owner(si, &o);
		return;
	}
	type = !shown && (accepted || (si->state_flags & SI_PASSIVE)) ? EV_ACCEPT : EV_OWNER;
	if (!family_pass(si->tuple.family) || !ports_pass(si->tuple.lport, si->tuple.rport)) {
		publish_owner(si, &o);	/* nothing of this connection was reported */
		return;
	}
	if (!owner_pass(&o)) {
		if (!was_unknown) {
			publish_owner(si, &o);
			return;
		}
		attr = ATTR_DISCARD;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		publish_owner(si, &o);
		count_lost();
		return;
	}
	/* (one null test: older verifiers lose the reservation across a combined one) */
	if (type == EV_ACCEPT)
		o.flags |= SI_ACCEPT_SHOWN;
	publish_owner(si, &o);
	tuple_to_pkt(&si->tuple, &p);
	fill_event(e, skp, si, &o, &p, type, DIR_RECEIVED, attr);
	bpf_ringbuf_submit(e, 0);
}

/*
 * Process context, socket in hand (accept, send/recv): make `current` its
 * owner, creating the entry (and its tuple) if the connection is new to us.
 */
static __always_inline void refresh_owner(__u64 skp, int accepted)
{
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skp);
	struct sock_info fresh;
	__u8 state;
	__u64 flags = BPF_NOEXIST;

	if (si && !(si->state_flags & SI_CLOSED)) {
		adopt(skp, si, accepted);
		return;
	}
	state = sk_state(skp);
	if (state == TCP_CLOSE || state == TCP_LISTEN || state == TCP_NEW_SYN_RECV)
		return;
	if (si)		/* closed, yet the socket is alive: a stale entry, replace it */
		flags = BPF_ANY;
	/*
	 * A connection that predates the tracer (or was evicted): start with
	 * start_ns 0.  From accept(), the owner is published by adopt(), after
	 * its EV_ACCEPT is reserved.
	 */
	init_entry(&fresh, skp, !accepted, 1, 0);
	if (bpf_map_update_elem(&socks, &skp, &fresh, flags))
		return;
	si = bpf_map_lookup_elem(&socks, &skp);
	if (!si)
		return;
	if (si->state_flags & SI_TUPLE_SET)
		insert_tuple(si, skp);
	if (accepted)
		adopt(skp, si, 1);
}

/*
 * If the socket is owned by user (lock_sock() held), the caller runs in the
 * task holding the lock, i.e. `current`: softirq and timer paths back off
 * while a task owns the socket, and the backlog they leave is processed by
 * that task.  Called where a segment is queued for sending (net_dev_queue
 * runs in the sender's context; net_dev_start_xmit may not, behind a qdisc)
 * and on state changes (close() runs them under the lock): adopting the
 * owner there, *before* the segment is reported, names the right process for
 * the first write after a hand-off and for the FIN of the last holder;
 * sock_send_length only fires after the data has gone out.
 */
static __always_inline void adopt_if_locked(__u64 skp, struct sock_info *si)
{
	union {
		char c[TASK_COMM_LEN];
		__u64 w[2];	/* the stack must be accessed aligned */
	} comm;
	const __u64 *b = (const __u64 *)si->o.comm;

	if (!BPF_CORE_READ((struct sock *)skp, sk_lock.owned))
		return;
	if (si->o.flags & SI_OWNER_KNOWN) {
		if ((__u32)(bpf_get_current_pid_tgid() >> 32) == si->o.pid) {
			bpf_get_current_comm(comm.c, sizeof(comm.c));
			if (comm.w[0] == b[0] && comm.w[1] == b[1])
				return;
		}
	}
	adopt(skp, si, 0);
}

/*
 * A segment of a connection in TIME_WAIT must continue its sequence space:
 * at most one past the highest end seen (our FIN / the peer's FIN) and not
 * far behind it.  Filters out a new connection that reuses the tuple of a
 * stale `tw` entry before it registered itself.
 */
static __always_inline int tw_plausible(__u8 flags, __u8 init_bit, __u32 max_end, __u32 seq)
{
	__s32 d = (__s32)(seq - max_end);

	if (!(flags & init_bit))
		return 1;
	return d <= 1 && d >= -(1 << 20);
}

/*
 * A segment of no live socket we follow: if the TIME_WAIT mini-socket of a
 * connection we followed sent (dir DIR_SENT) or received it, it is still that
 * connection's, shown under its last owner.  Returns 1 if it was.
 */
static __always_inline int emit_time_wait(const struct pkt *p, __u8 dir)
{
	struct sock_info *si;
	__u8 type, attr = 0;
	int plausible;

	if (p->flags & TH_SYN)
		return 0;
	si = bpf_map_lookup_elem(&tw, &p->t);
	if (!si)
		return 0;
	if (dir == DIR_SENT)
		plausible = tw_plausible(si->tx_flags, SI_TX_SEQ_INIT, si->tx_max_end, p->seq);
	else
		plausible = tw_plausible(si->rx_flags, SI_RX_SEQ_INIT, si->rx_max_end, p->seq);
	if (!plausible)
		return 0;
	if (p->payload)
		attr |= ATTR_RETRANS;
	if (p->flags & TH_RST)
		type = EV_RESET;
	else if (no_data)
		return 1;
	else
		type = dir == DIR_SENT ? EV_SEND : EV_RECV;
	if (family_pass(p->t.family) && ports_pass(p->t.lport, p->t.rport))
		emit(si->sk, si, p, type, dir, attr);
	return 1;
}

/*
 * A segment of no socket we know, counted if it is in scope: its ports and
 * family pass the filters, and no owner filter is active (its owner is
 * unknown, so it could be anybody's).
 */
static __always_inline void count_unattributed(const struct pkt *p)
{
	__u32 zero = 0;
	__u64 *v;

	if (owner_filters_active() || !family_pass(p->t.family) || !ports_pass(p->t.lport, p->t.rport))
		return;
	v = bpf_map_lookup_elem(&unattributed, &zero);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/*
 * A packet of a passive handshake, seen before its socket has an owner (or,
 * for the SYN and the ACK, before it exists): Python holds it by tuple and
 * prints it as an accept line once the connection is accepted, or as the
 * closed-port pair's SYN.
 */
static __always_inline void emit_handshake(__u64 skp, const struct sock_info *si,
					   const struct pkt *p, __u8 dir)
{
	if (family_pass(p->t.family) && ports_pass(p->t.lport, p->t.rport))
		emit(skp, si, p, EV_HANDSHAKE, dir, ATTR_OWNER_UNKNOWN);
}

/* References to a file: descriptors (in any process) and in-flight SCM_RIGHTS messages. */
static __always_inline long file_refs(struct file *f)
{
	if (bpf_core_field_exists(f->f_count))
		return BPF_CORE_READ(f, f_count.counter);
	return BPF_CORE_READ(f, f_ref.refcnt.counter) + 1;	/* 6.13+: 0 is one reference */
}

/*
 * Process `tgid` lets go of its descriptor `f` of socket `skp` (close, exit).
 * If it owned the socket and others still hold it, nobody is known to own it
 * until the next holder does I/O: segments meanwhile are held in user space
 * and named after that holder (EV_OWNER).  The last reference going away
 * closes the socket in this task, which stays its owner.
 */
static __always_inline void owner_leaves(__u64 skp, struct file *f, __u32 tgid)
{
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skp);

	if (!si || !(si->o.flags & SI_OWNER_KNOWN) || si->o.pid != tgid)
		return;
	if (file_refs(f) <= 1)
		return;
	si->o.flags &= ~SI_OWNER_KNOWN;
}

static __always_inline void closing_fd(__s64 fd)
{
	struct file *f;
	__u64 skp;

	if (fd < 0 || fd > 0x7fffffff)
		return;
	f = fd_to_file((__u32)fd);
	skp = file_to_tcp_sk(f);
	if (skp)
		owner_leaves(skp, f, bpf_get_current_pid_tgid() >> 32);
}

/* The owner, from a task other than current (the iterator's). */
static __always_inline void task_owner(struct task_struct *task, struct owner *o)
{
	__u8 flags = SI_OWNER_KNOWN;

	__builtin_memset(o, 0, sizeof(*o));
	o->pid = BPF_CORE_READ(task, tgid);
	o->uid = BPF_CORE_READ(task, cred, uid.val);
	o->cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	bpf_core_read(o->comm, sizeof(o->comm), &task->comm);
	if (has_cgroup && cgroup_matches(task))
		flags |= SI_CGROUP_MATCH;
	o->flags = flags;
}

/* ---- 1. socket state changes ------------------------------------------------------ */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, struct sock *sk, int oldstate, int newstate)
{
	__u64 skp = (__u64)sk;
	struct sock_info *si;
	struct sock_info fresh;
	struct pkt p;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		/* connect(): runs in the connecting task; no local port yet */
		init_entry(&fresh, skp, 1, 0, bpf_ktime_get_ns());
		fresh.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		bpf_map_update_elem(&socks, &skp, &fresh, BPF_ANY);
		return 0;
	}

	if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		/*
		 * A listener's child being created (inet_csk_clone_lock, in
		 * softirq): register it now, owner unknown, so that a TCP Fast
		 * Open child, which sends and is accepted before ESTABLISHED, is
		 * tracked from its SYN-ACK on.  Its addresses are not set yet.
		 */
		init_entry(&fresh, skp, 0, 0, bpf_ktime_get_ns());
		fresh.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		fresh.state_flags = SI_PASSIVE;
		bpf_map_update_elem(&socks, &skp, &fresh, BPF_ANY);
		return 0;
	}

	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* passive child completing the handshake, in softirq */
		si = bpf_map_lookup_elem(&socks, &skp);
		if (si && !(si->state_flags & SI_CLOSED)) {
			si->state_flags |= SI_ESTABLISHED;
			if (!si->start_ns)
				si->start_ns = bpf_ktime_get_ns();
			if (!(si->state_flags & SI_TUPLE_SET) && tuple_from_sk(skp, &si->tuple)) {
				si->netns = si->tuple.netns;
				insert_tuple(si, skp);
			}
			return 0;
		}
		/* created before the tracer started: owner unknown */
		init_entry(&fresh, skp, 0, 1, bpf_ktime_get_ns());
		fresh.state_flags |= SI_PASSIVE | SI_ESTABLISHED;
		if (bpf_map_update_elem(&socks, &skp, &fresh, BPF_ANY))
			return 0;
		si = bpf_map_lookup_elem(&socks, &skp);
		if (si && (si->state_flags & SI_TUPLE_SET))
			insert_tuple(si, skp);
		return 0;
	}

	si = bpf_map_lookup_elem(&socks, &skp);
	if (!si || (si->state_flags & SI_CLOSED))
		return 0;
	/* close() and shutdown() by the socket's last holder, under its lock */
	adopt_if_locked(skp, si);
	if (newstate != TCP_CLOSE)
		return 0;
	si->state_flags |= SI_CLOSED;
	if (si->state_flags & SI_PASSIVE)
		bpf_map_delete_elem(&halfopen, &si->tuple);
	if (si->state_flags & SI_TUPLE_SET) {
		/*
		 * An active close hands the connection to a TIME_WAIT mini-socket:
		 * the peer's FIN and our last ACK still cross the wire after this.
		 * A copy keyed by the tuple names those segments (see `tw`).
		 */
		if (oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 ||
		    oldstate == TCP_CLOSING) {
			si->state_flags |= SI_TIME_WAIT;
			bpf_map_update_elem(&tw, &si->tuple, si, BPF_ANY);
		}
		tuple_release(&si->tuple, skp);
		tuple_to_pkt(&si->tuple, &p);
	} else {
		/* never got a tuple (e.g. connect() failed before sending): from the socket */
		tuple_to_pkt(&si->tuple, &p);
		tuple_from_sk(skp, &p.t);
		p.t.netns = si->netns;
	}
	if (family_pass(p.t.family) && ports_pass(p.t.lport, p.t.rport))
		emit(skp, si, &p, EV_CLOSE, DIR_SENT, 0);
	return 0;
}

/* The socket is being freed: forget it (its address may be reused at once). */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	__u64 skp = (__u64)sk;
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skp);

	if (!si)
		return 0;
	if (si->state_flags & SI_TUPLE_SET)
		tuple_release(&si->tuple, skp);
	bpf_map_delete_elem(&socks, &skp);
	return 0;
}

/* ---- 2. accept ------------------------------------------------------------------------ */
/* A 32-bit (ia32) syscall: its numbers and argument registers differ. */
static __always_inline int in_compat_syscall(void)
{
	struct task_struct___x86 *t = (struct task_struct___x86 *)bpf_get_current_task();

	return BPF_CORE_READ(t, thread_info.status) & TS_COMPAT;
}

/*
 * Every syscall exit (tp_btf/sys_exit: no per-syscall BTF tracepoint exists),
 * so the cheap tests come first.  args: (struct pt_regs *regs, long ret); the
 * syscall number is regs->orig_ax on x86_64, as syscall_get_nr() reads it.
 */
/*
 * accept()/accept4() returned a socket: the calling process owns it.  Classic syscall tracepoints, not
 * tp_btf/sys_exit: they fire only for these two syscalls (a tp_btf/sys_exit program would run on every
 * syscall exit on the machine, ~40 ns each), and they cannot be skipped by the kernel's recursion guard,
 * since they run in process context, never nested inside another BPF program (our softirq-time programs
 * are tp_btf, which that guard ignores).  Compat (32-bit) syscalls never reach these tracepoints.
 */
struct sys_exit_ctx {
	__u64 common;		/* struct trace_entry */
	__s32 syscall_nr;
	__s32 pad;
	__s64 ret;
};

static __always_inline int accepted(__s64 ret)
{
	__u64 skp;

	if (ret < 0 || ret > 0x7fffffff)
		return 0;
	skp = fd_to_tcp_sk((__u32)ret);
	if (skp)
		refresh_owner(skp, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept4(struct sys_exit_ctx *ctx)
{
	return accepted(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int on_accept(struct sys_exit_ctx *ctx)
{
	return accepted(ctx->ret);
}

/* ---- 3. a descriptor let go of: close(), exit ----------------------------------------- */
struct sys_enter_ctx {
	__u64 common;		/* struct trace_entry */
	__s32 syscall_nr;
	__s32 pad;
	__u64 args[6];
};

/* Linux 6.3+ (below, the syscall-entry fallback program sees close() too). */
SEC("tracepoint/syscalls/sys_enter_close")
int on_close(struct sys_enter_ctx *ctx)
{
	closing_fd((__s64)ctx->args[0]);
	return 0;
}

/* Descriptors looked at when a process exits or execs; sockets past them are not seen then. */
#define MAX_WALK_FDS	1024
#define FD_EXIT		0	/* the process is exiting: it lets go of the socket */
#define FD_EXEC		1	/* the process exec'd: same owner, new name */

/*
 * One descriptor of a process that exits or execs.  A global function:
 * verified once on its own, so the loop in walk_fds() does not multiply its
 * branches (the verifier's limit on pending branch states).
 */
__noinline int walked_fd(__u64 file, __u32 tgid, __u32 what)
{
	__u64 skp = file_to_tcp_sk((struct file *)file);
	struct sock_info *si;
	struct owner o;

	if (!skp)
		return 0;
	if (what == FD_EXIT) {
		owner_leaves(skp, (struct file *)file, tgid);
		return 0;
	}
	si = bpf_map_lookup_elem(&socks, &skp);
	if (si && (si->o.flags & SI_OWNER_KNOWN) && si->o.pid == tgid) {
		current_owner(&o);
		publish_owner(si, &o);
	}
	return 0;
}

static __always_inline void walk_fds(struct task_struct *task, __u32 what)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct file **fds;
	__u32 max;

	if (!fdt)
		return;
	max = BPF_CORE_READ(fdt, max_fds);
	fds = BPF_CORE_READ(fdt, fd);
	for (__u32 i = 0; i < MAX_WALK_FDS; i++) {
		struct file *f = 0;

		if (i >= max)
			break;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[i]);
		if (f)
			walked_fd((__u64)f, tgid, what);
	}
}

/*
 * A process exits (its descriptors are closed after this tracepoint): the
 * sockets it owned and that others still hold lose their owner, as on close.
 * Only for the last task sharing the fd table.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	struct files_struct *files = BPF_CORE_READ(p, files);

	if (files && BPF_CORE_READ(files, count.counter) == 1)
		walk_fds(p, FD_EXIT);
	return 0;
}

/*
 * A process exec'd (in its own context, its new name set): the sockets it
 * owns and kept across exec are named after the new program from now on.
 * (Those it had marked close-on-exec are gone already; they keep their owner
 * until someone else does I/O on them.)
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p)
{
	walk_fds(p, FD_EXEC);
	return 0;
}

/* ---- 4. every packet sent ------------------------------------------------------------ */
/*
 * A segment queued for a device, in the context that sends it: the place to
 * learn the sender (see adopt_if_locked).  The segment itself is reported at
 * net_dev_start_xmit, where the device really sends it.
 */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_queue, struct sk_buff *skb)
{
	__u64 skp = (__u64)skb->sk;
	struct sock_info *si;

	if (!skp)
		return 0;
	si = bpf_map_lookup_elem(&socks, &skp);
	if (si && !(si->state_flags & SI_CLOSED))
		adopt_if_locked(skp, si);
	return 0;
}

/* A full TCP socket that can send (not a request, TIME_WAIT or control socket). */
static __always_inline int live_tcp_sock(__u64 skp)
{
	struct sock *sk = (struct sock *)skp;
	__u8 state;

	if (!skp || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	state = sk_state(skp);
	return state != TCP_CLOSE && state != TCP_LISTEN && state != TCP_NEW_SYN_RECV &&
	       state != TCP_TIME_WAIT;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_tx, struct sk_buff *skb, struct net_device *dev)
{
	const unsigned char *head = skb->head;
	const unsigned char *nh = head + skb->network_header;
	const unsigned char *data = skb->data;
	__u64 skp = (__u64)skb->sk;
	struct sock_info *si;
	struct sock_info fresh;
	struct pkt p;
	__u32 fresh_bytes;
	__u8 type, attr = 0;

	if (nh < data || nh - data > 256 || skb->len <= (__u32)(nh - data))
		return 0;
	__builtin_memset(&p, 0, sizeof(p));
	if (parse_ip_tcp(nh, skb->len - (__u32)(nh - data), skb->protocol, &p))
		return 0;
	p.t.netns = dev->nd_net.net->ns.inum;
	read_gso(skb, head, &p);
	p.cap_slot = capture_source(CAPTURE_SLOT_TX, skb, dev, nh);

	si = skp ? bpf_map_lookup_elem(&socks, &skp) : 0;
	if (si && stale(skp, si)) {
		bpf_map_delete_elem(&socks, &skp);
		si = 0;
	}
	if (!si) {
		/* RST+ACK with seq 0: the answer to a SYN sent to a closed port */
		if ((p.flags & (TH_RST | TH_ACK)) == (TH_RST | TH_ACK) && p.seq == 0) {
			if (!owner_filters_active() && family_pass(p.t.family) &&
			    ports_pass(p.t.lport, p.t.rport))
				emit(0, 0, &p, EV_RESET_CLOSED_PORT, DIR_SENT, 0);
			return 0;
		}
		if (emit_time_wait(&p, DIR_SENT))
			return 0;
		if ((p.flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)) {
			/* from a listener's request socket */
			__u8 one = 1;

			bpf_map_update_elem(&halfopen, &p.t, &one, BPF_ANY);
			emit_handshake(0, 0, &p, DIR_SENT);
			return 0;
		}
		/*
		 * No live socket: a reply of the kernel's control socket (a RST to
		 * a stray segment), or the TIME_WAIT remnant of a connection that
		 * ended before we followed it, which no process holds any more.
		 */
		if (!live_tcp_sock(skp))
			return 0;
		/* a connection we did not know (evicted, or missed at start): from now on */
		init_entry(&fresh, skp, 0, 0, 0);
		bpf_map_update_elem(&socks, &skp, &fresh, BPF_NOEXIST);
		si = bpf_map_lookup_elem(&socks, &skp);
		if (!si) {
			count_unattributed(&p);
			return 0;
		}
	}

	if (!(si->state_flags & SI_CLOSED) && !(si->tx_flags & SI_TUPLE_WIRE)) {
		/*
		 * A passive TCP Fast Open child's SYN-ACK (a normal child's goes out
		 * from its request sock): the SYN's data is in the socket already.
		 * Seeded here, before the tuple is inserted below, so no receive
		 * path can see the entry yet.
		 */
		if ((si->state_flags & SI_PASSIVE) && (p.flags & TH_SYN) &&
		    !(si->rx_flags & SI_RX_SEQ_INIT)) {
			seed_rx(skp, si);
			si->syn_data = si->rx_bytes;
		}
		/* first packet we see: key the connection by what the wire shows */
		if (!(si->state_flags & SI_TUPLE_SET) || !tuple_equal(&si->tuple, &p.t)) {
			if (si->state_flags & SI_TUPLE_SET)
				tuple_release(&si->tuple, skp);
			si->tuple = p.t;
			si->netns = p.t.netns;
			insert_tuple(si, skp);
		}
		si->tx_flags |= SI_TUPLE_WIRE;
	}

	fresh_bytes = 0;
	if (!(si->state_flags & SI_CLOSED))
		fresh_bytes = count_new(&si->tx_flags, SI_TX_SEQ_INIT, &si->tx_max_end, si->tx_hole,
					&si->tx_bytes, p.seq, p.payload, p.flags);
	if (p.payload && !fresh_bytes)
		attr |= ATTR_RETRANS;

	if (p.flags & TH_RST)
		type = EV_RESET;
	else if ((p.flags & (TH_SYN | TH_ACK)) == TH_SYN)
		type = EV_CONNECT;
	else if ((p.flags & TH_SYN) && (si->state_flags & SI_PASSIVE))
		type = EV_HANDSHAKE;	/* a Fast Open child's SYN-ACK: an accept line */
	else if (no_data)
		return 0;
	else
		type = EV_SEND;
	if (family_pass(p.t.family) && ports_pass(p.t.lport, p.t.rport))
		emit(skp, si, &p, type, DIR_SENT, attr);
	return 0;
}

/* ---- 5. every packet received ---------------------------------------------------------- */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(on_rx, struct sk_buff *skb)
{
	/* skb->data is at the network header here (the MAC header was pulled) */
	const unsigned char *data = skb->data;
	__u64 *skpp, skp = 0;
	struct sock_info *si = 0;
	struct pkt p;
	__u32 fresh_bytes;
	__u8 type, attr = 0;

	__builtin_memset(&p, 0, sizeof(p));
	if (parse_ip_tcp(data, skb->len, skb->protocol, &p))
		return 0;
	p.t.netns = skb->dev->nd_net.net->ns.inum;
	flip(&p.t);
	p.cap_slot = capture_source(CAPTURE_SLOT_RX, skb, skb->dev, data);

	skpp = bpf_map_lookup_elem(&tuples, &p.t);
	if (skpp) {
		skp = *skpp;
		si = bpf_map_lookup_elem(&socks, &skp);
		/*
		 * A live mapping always equals its entry's tuple; a mismatch means
		 * the socket address was reused and the mapping is left over.
		 */
		if (si && !tuple_equal(&si->tuple, &p.t)) {
			tuple_release(&p.t, skp);
			si = 0;
		}
	}
	read_gso(skb, skb->head, &p);
	if (!si) {
		if (emit_time_wait(&p, DIR_RECEIVED))
			return 0;
		/*
		 * A SYN, or what completes a handshake whose SYN-ACK a request
		 * socket sent (the child socket is created while TCP processes it,
		 * after this tracepoint; data can even overtake the ACK from another
		 * CPU).  Anything else is not counted: a packet received on a device
		 * may be for no socket of this host at all (forwarded, bridged to a
		 * container, a stray), and it cannot be told apart here from one for
		 * a socket we do not know.
		 */
		if ((p.flags & (TH_SYN | TH_ACK)) == TH_SYN || bpf_map_lookup_elem(&halfopen, &p.t))
			emit_handshake(0, 0, &p, DIR_RECEIVED);
		return 0;
	}
	if ((si->state_flags & SI_PASSIVE) && !(si->rx_flags & SI_RX_SEQ_INIT))
		seed_rx(skp, si);
	/* after TCP_CLOSE (until the socket is destroyed: a RST crossing ours) nothing is new */
	fresh_bytes = 0;
	if (!(si->state_flags & SI_CLOSED))
		fresh_bytes = count_new(&si->rx_flags, SI_RX_SEQ_INIT, &si->rx_max_end, si->rx_hole,
					&si->rx_bytes, p.seq, p.payload, p.flags);
	if (p.payload && !fresh_bytes)
		attr |= ATTR_RETRANS;

	if (p.flags & TH_RST)
		type = EV_RESET;
	else if ((si->state_flags & (SI_PASSIVE | SI_ESTABLISHED)) == SI_PASSIVE)
		type = EV_HANDSHAKE;	/* the ACK that completes a Fast Open child's handshake */
	else if (no_data)
		return 0;
	else
		type = EV_RECV;
	if (family_pass(p.t.family) && ports_pass(p.t.lport, p.t.rport))
		emit(skp, si, &p, type, DIR_RECEIVED, attr);
	return 0;
}

/*
 * ---- 6. send/recv on a socket (6.3+): who uses it now -----------------------------------
 * raw_tracepoint, not tp_btf: a tp_btf program's target must exist in the
 * kernel's BTF when the object is relocated (the loader relocates every
 * program), and these tracepoints are missing before 6.3, where the object
 * must still load.  A raw tracepoint is only looked up at attach time, and
 * has the same per-program recursion rule.  args: (struct sock *sk, int ret,
 * int flags).
 */
static __always_inline int handle_sock_length(__u64 skp)
{
	struct sock *sk = (struct sock *)skp;
	__u16 family;

	if (!skp || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	refresh_owner(skp, 0);
	return 0;
}

SEC("raw_tracepoint/sock_send_length")
int BPF_PROG(on_send_len, struct sock *sk)
{
	return handle_sock_length((__u64)sk);
}

SEC("raw_tracepoint/sock_recv_length")
int BPF_PROG(on_recv_len, struct sock *sk)
{
	return handle_sock_length((__u64)sk);
}

/*
 * ---- 7. the same from syscalls, for kernels without sock_*_length (< 6.3) ---------------
 * One program on every syscall entry.  args: (struct pt_regs *regs, long id);
 * the fd is the first argument, regs->di on x86_64.
 */
SEC("tp_btf/sys_enter")
int BPF_PROG(fb_sys_enter, struct pt_regs *regs, long id)
{
	__s64 fd;
	__u64 skp;

	switch (id) {
	case NR_write: case NR_writev: case NR_sendto: case NR_sendmsg:
	case NR_read: case NR_readv: case NR_recvfrom: case NR_recvmsg:
	case NR_close:
		break;
	default:
		return 0;
	}
	if (in_compat_syscall())
		return 0;
	fd = (__s64)((struct pt_regs___x86 *)regs)->di;
	if (id == NR_close) {
		closing_fd(fd);
		return 0;
	}
	if (fd < 0 || fd > 0x7fffffff)
		return 0;
	skp = fd_to_tcp_sk((__u32)fd);
	if (skp)
		refresh_owner(skp, 0);
	return 0;
}

/*
 * ---- 8. what exists at start: BPF iterators, run once before the first record is read ------
 * task_file visits every process's descriptors: each TCP socket held by a
 * process is registered with that process as its owner (the first one seen,
 * if several hold it) and its tuple, so its first segment is named.  tcp
 * visits the sockets of pytracer's network namespace: those no process holds
 * (orphans, connections waiting to be accepted) are registered with an
 * unknown owner.  Entries the live programs made meanwhile are kept.
 */
static __always_inline void seed(__u64 skp, struct task_struct *task)
{
	struct sock_info fresh;
	struct sock_info *si;
	__u8 state = sk_state(skp);

	if (state == TCP_CLOSE || state == TCP_LISTEN || state == TCP_NEW_SYN_RECV ||
	    state == TCP_TIME_WAIT || state == TCP_SYN_RECV)
		return;
	if (bpf_map_lookup_elem(&socks, &skp))
		return;
	init_entry(&fresh, skp, 0, 1, 0);
	if (task)
		task_owner(task, &fresh.o);
	else if (state == TCP_ESTABLISHED && !BPF_CORE_READ((struct sock *)skp, sk_socket))
		fresh.state_flags |= SI_PASSIVE | SI_ESTABLISHED;	/* not accepted yet */
	if (bpf_map_update_elem(&socks, &skp, &fresh, BPF_NOEXIST))
		return;
	si = bpf_map_lookup_elem(&socks, &skp);
	if (si && (si->state_flags & SI_TUPLE_SET))
		insert_tuple(si, skp);
}

SEC("iter/task_file")
int seed_owners(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	__u64 skp;

	if (!task || !file)
		return 0;
	skp = file_to_tcp_sk(file);
	if (skp)
		seed(skp, task);
	return 0;
}

SEC("iter/tcp")
int seed_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;

	if (skc)
		seed((__u64)skc, 0);
	return 0;
}
