/* SPDX-License-Identifier: GPL-2.0 */
/*
 * active_open.bpf.h - the connect()s in progress, for the tools that report
 * an active open when its handshake ends (tcpconnect, tcpconnlat).
 *
 * sock:inet_sock_set_state CLOSE -> SYN_SENT runs in the task that called
 * connect() (tcp_v4_connect/tcp_v6_connect, before the SYN is sent): that
 * is where the owner is known.  The outcome, SYN_SENT -> ESTABLISHED (the
 * SYN-ACK) or SYN_SENT -> CLOSE (a reset, a timeout), usually runs in
 * softirq on behalf of no particular process, so the owner and the start
 * time are kept per socket in `active_opens` until then.  The owner filters
 * (owner.bpf.h) and the family and port filters are applied at the start:
 * connections they reject are never stored.  -P means the remote port here,
 * the only one connect() chooses.
 * Include after owner.bpf.h and sock_addrs.bpf.h.
 */
#ifndef PYTRACER_ACTIVE_OPEN_BPF_H
#define PYTRACER_ACTIVE_OPEN_BPF_H

#define AO_IN_CONNECT	0x01	/* started by connect(), whose return is still to come */
#define AO_CLOSED	0x02	/* closed inside that connect(): its return value is the error */

struct active_open {
	struct owner o;
	__u64 start_ns;		/* bpf_ktime_get_ns() at CLOSE -> SYN_SENT */
	__u64 tid;		/* pid_tgid of the connecting thread */
	struct sock_addrs addrs;	/* a tool's copy, when it reports after the socket changed (AO_CLOSED) */
	__u8 flags;		/* AO_* */
	__u8 _pad[7];
};

/* enough for every handshake in flight on a busy host; LRU: a lost outcome is evicted, not kept forever */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);			/* struct sock * */
	__type(value, struct active_open);
} active_opens SEC(".maps");

/*
 * CLOSE -> SYN_SENT, in the connecting task: remember it if the filters let
 * it through.  The local port is not chosen yet at this point.
 */
static __always_inline void active_open_begin(struct sock *sk)
{
	__u64 skp = (__u64)sk;
	struct active_open ao;
	struct sock_addrs a;

	read_sock_addrs(sk, &a);
	if (!a.family || !family_pass(a.family) || !ports_pass(a.rport, a.rport))
		return;
	__builtin_memset(&ao, 0, sizeof(ao));
	current_owner(&ao.o);
	if (!owner_pass(&ao.o))
		return;
	ao.start_ns = bpf_ktime_get_ns();
	ao.tid = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&active_opens, &skp, &ao, BPF_ANY);
}

/* A state change that ends the handshake of a socket we follow: its entry, or 0 (deleted by the caller). */
static __always_inline struct active_open *active_open_lookup(struct sock *sk)
{
	__u64 skp = (__u64)sk;

	return bpf_map_lookup_elem(&active_opens, &skp);
}

static __always_inline void active_open_end(struct sock *sk)
{
	__u64 skp = (__u64)sk;

	bpf_map_delete_elem(&active_opens, &skp);
}

#endif /* PYTRACER_ACTIVE_OPEN_BPF_H */
