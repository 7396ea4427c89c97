// SPDX-License-Identifier: GPL-2.0
/*
 * tcpsnoop.bpf.c - TCP packets by process, from tracepoints only.
 *
 * Design (details and the facts it rests on: docs/bpf-design.md):
 *   - Which process owns each socket is sockowner.bpf.h's (shared with the
 *     other TCP tools): its `socks` map, extended here by the byte counters
 *     and sequence state below, and the programs that keep owners right.
 *     This file parses and reports the packets, and announces owners that
 *     become known late (EV_ACCEPT, EV_OWNER) through the header's hooks.
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
 *     closed connection's (`ended`: TIME_WAIT, or strays the kernel answers
 *     with a RST), or counted in `unattributed`.
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
const volatile __u8 no_data = 0;	/* no EV_SEND/EV_RECV records; bytes still counted */

/* tx_flags: written on the transmit path only (serialised per socket) */
#define SI_TX_SEQ_INIT	0x01
#define SI_TUPLE_WIRE	0x02	/* tuple was taken from a sent packet */
/* rx_flags: written on the receive path only */
#define SI_RX_SEQ_INIT	0x01

/* tcpsnoop's members of a socket's entry (struct sock_info, sockowner.bpf.h) */
#define SOCK_INFO_TOOL_FIELDS							\
	__u64 tx_bytes;								\
	__u64 rx_bytes;								\
	__u32 tx_max_end;	/* highest sequence number (exclusive) of payload sent */	\
	__u32 rx_max_end;	/* idem received */					\
	__u32 tx_hole[2];	/* [start, end): sequence numbers skipped by a later segment, not seen yet */ \
	__u32 rx_hole[2];	/* idem received (segments reordered between CPUs before netif_receive_skb) */ \
	__u32 syn_data;		/* passive TCP Fast Open: payload bytes the SYN carried */	\
	__u8 tx_flags;								\
	__u8 rx_flags;								\
	__u8 _tool_pad[2];

/* ---- maps: `socks` and `tuples`, and the programs that keep owners right -------------------- */
#include "sockowner.bpf.h"

/*
 * Connections that closed, by tuple: segments of theirs still cross the wire
 * after the full socket is gone.  After an active close the TIME_WAIT
 * mini-socket receives the peer's FIN and sends our last ACK; after any close
 * of an established connection a late segment of the peer (a FIN or data
 * retransmitted after our LAST_ACK ended, data in flight after an abort) is
 * answered by the kernel's control socket with a RST.  The socket's address
 * may be reused at once, so the copy is keyed by the 4-tuple, never by the
 * freed pointer.  A new connection on the same tuple removes it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct tuple);
	__type(value, struct sock_info);
} ended SEC(".maps");

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

/* Segments of no socket we know (not a handshake, not a closed connection's): counted, never dropped silently. */
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

static __always_inline void tuple_to_pkt(const struct tuple *t, struct pkt *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	p->t = *t;
	p->gso_segs = 1;
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
 * A segment of a closed connection must continue its sequence space: at most
 * one past the highest end seen (our FIN / the peer's FIN) and not far behind
 * it.  Filters out a new connection that reuses the tuple of a stale `ended`
 * entry before it registered itself.  (Data in flight after an abort arrives
 * in order: each accepted segment moves the end, see emit_ended.)
 */
static __always_inline int ended_plausible(__u8 flags, __u8 init_bit, __u32 max_end, __u32 seq)
{
	__s32 d = (__s32)(seq - max_end);

	if (!(flags & init_bit))
		return 1;
	return d <= 1 && d >= -(1 << 20);
}

/* A segment of no live socket: if it is on the tuple of a connection in `ended`, it is that connection's,
 * shown under its last owner.  Returns 1 if it was. */
static __always_inline int emit_ended(const struct pkt *p, __u8 dir)
{
	struct sock_info *si;
	__u8 type, attr = 0;
	int plausible;

	if (p->flags & TH_SYN)
		return 0;
	si = bpf_map_lookup_elem(&ended, &p->t);
	if (!si)
		return 0;
	if (dir == DIR_SENT)
		plausible = ended_plausible(si->tx_flags, SI_TX_SEQ_INIT, si->tx_max_end, p->seq);
	else
		plausible = ended_plausible(si->rx_flags, SI_RX_SEQ_INIT, si->rx_max_end, p->seq);
	if (!plausible)
		return 0;
	if (dir == DIR_RECEIVED && p->payload && (__s32)(p->seq + p->payload - si->rx_max_end) > 0)
		si->rx_max_end = p->seq + p->payload;
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

/* ---- the hooks of sockowner.bpf.h ------------------------------------------------------ */
static __always_inline void sockowner_on_tuple(const struct tuple *t)
{
	/* a live connection on this tuple ends a closed predecessor's */
	bpf_map_delete_elem(&ended, t);
}

/*
 * The owner of `si` becomes known (adopt): a passive socket not shown yet
 * with EV_ACCEPT (Python prints the handshake and flushes the records it held
 * back), any other with EV_OWNER (Python flushes them under the new owner);
 * either with ATTR_DISCARD if the owner fails the filters.
 *
 * Order: the EV_ACCEPT record is reserved *before* the new owner is
 * published.  Every other record snapshots the owner before reserving (see
 * emit), so one that carries the new owner was reserved after the EV_ACCEPT
 * and follows it in the ring: no line of the connection is named before its
 * accept lines.  (One that still saw the old "unknown" owner may follow too;
 * Python holds it and flushes it with the owner.)
 */
static __always_inline void sockowner_on_owner(__u64 skp, struct sock_info *si, struct owner *o,
					       int first, int was_unknown)
{
	struct tcpsnoop_event *e;
	struct pkt p;
	__u8 type, attr = 0;

	type = first ? EV_ACCEPT : EV_OWNER;
	if (!family_pass(si->tuple.family) || !ports_pass(si->tuple.lport, si->tuple.rport)) {
		publish_owner(si, o);	/* nothing of this connection was reported */
		return;
	}
	if (!owner_pass(o)) {
		if (!was_unknown) {
			publish_owner(si, o);
			return;
		}
		attr = ATTR_DISCARD;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		publish_owner(si, o);
		count_lost();
		return;
	}
	/* (one null test: older verifiers lose the reservation across a combined one) */
	if (type == EV_ACCEPT)
		o->flags |= SI_ACCEPT_SHOWN;
	publish_owner(si, o);
	tuple_to_pkt(&si->tuple, &p);
	fill_event(e, skp, si, o, &p, type, DIR_RECEIVED, attr);
	bpf_ringbuf_submit(e, 0);
}

/* TCP_CLOSE: the close line; an established connection leaves a copy by tuple (see `ended`). */
static __always_inline void sockowner_on_close(__u64 skp, struct sock_info *si, int oldstate)
{
	struct pkt p;

	if (si->state_flags & SI_PASSIVE)
		bpf_map_delete_elem(&halfopen, &si->tuple);
	if (si->state_flags & SI_TUPLE_SET) {
		/*
		 * Not a connection that never was one (a refused or timed-out
		 * connect, a child reset in its handshake): nothing of it follows.
		 * Nor one whose owner is unknown, unless TIME_WAIT follows (its
		 * lines would wait in user space for an owner that never comes).
		 */
		int active = oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 ||
			     oldstate == TCP_CLOSING;

		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV &&
		    (active || (si->o.flags & SI_OWNER_KNOWN)))
			bpf_map_update_elem(&ended, &si->tuple, si, BPF_ANY);
		tuple_to_pkt(&si->tuple, &p);
	} else {
		/* never got a tuple (e.g. connect() failed before sending): from the socket */
		tuple_to_pkt(&si->tuple, &p);
		tuple_from_sk(skp, &p.t);
		p.t.netns = si->netns;
	}
	if (family_pass(p.t.family) && ports_pass(p.t.lport, p.t.rport))
		emit(skp, si, &p, EV_CLOSE, DIR_SENT, 0);
}

/* ---- 4. every packet sent ------------------------------------------------------------ */

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
		if (emit_ended(&p, DIR_SENT))
			return 0;
		if ((p.flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)) {
			/* from a listener's request socket: a new connection on the tuple */
			__u8 one = 1;

			bpf_map_delete_elem(&ended, &p.t);
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
		if (emit_ended(&p, DIR_RECEIVED))
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

