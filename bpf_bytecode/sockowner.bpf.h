/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sockowner.bpf.h - which process owns each TCP socket, kept right from
 * tracepoints: the `socks` map (socket address -> struct sock_info: its
 * owner, when it started, its tuple), the `tuples` map (the connection's
 * addresses as on the wire, per network namespace -> socket), and the
 * programs that keep both right.  Owners are learnt in process context and
 * *used* in any context, so a tool that reports from softirq (a state
 * change, a packet) names the process that holds the socket, never whoever
 * was interrupted.  Facts behind it: docs/bpf-design.md.
 *
 * The programs (a tool loads those it needs, pytracer/toolkit/sockowner.py):
 *   on_state        tp_btf/inet_sock_set_state: entries are made at connect()
 *                   and when a listener's child is created; TCP_CLOSE ends them
 *   on_state_nested, on_destroy_nested  the same tracepoints: the runs that
 *                   nest in on_state, on_destroy (nest.bpf.h)
 *   on_destroy      tp_btf/tcp_destroy_sock: the entry goes
 *   on_accept(4)    sys_exit_accept(4): the accepting process owns the socket
 *   on_close        sys_enter_close: the owner lets go (loaded where
 *                   fb_sys_enter, which sees close() too, is not)
 *   on_exit/on_exec sched_process_exit/exec: the owner lets go / is renamed
 *   on_queue        net_dev_queue: adopt the sender of a segment (per packet)
 *   on_send_len, on_recv_len   raw_tracepoint sock_{send,recv}_length (6.3+):
 *                   whoever does I/O on a socket owns it
 *   fb_sys_enter    tp_btf/sys_enter: the same from syscalls below 6.3 (and
 *                   close()); runs on every syscall
 *   seed_owners, seed_sockets  iter/task_file, iter/tcp: sockets that exist
 *                   when the tool starts
 *
 * How a tool uses it: include it after filters.bpf.h, having defined
 * SOCK_INFO_TOOL_FIELDS (the tool's own members of struct sock_info, may be
 * empty), then define these three hooks (each may be empty):
 *
 *   sockowner_on_tuple(t)   a live connection is about to be keyed in
 *                           `tuples` by t (tcpsnoop: the copy of a closed
 *                           earlier connection on t ends)
 *   sockowner_on_owner(skp, si, o, first, was_unknown)
 *                           process context: `current` (o) becomes the owner
 *                           of a socket whose owner was unknown, or (first)
 *                           of a passive socket not announced yet.  The hook
 *                           must publish_owner(si, o), at the moment it
 *                           chooses (tcpsnoop reserves its EV_ACCEPT first);
 *                           setting SI_ACCEPT_SHOWN in o->flags makes later
 *                           accepts of it ordinary owner changes
 *   sockowner_on_close(skp, si, oldstate)
 *                           the socket reaches TCP_CLOSE (SI_CLOSED just set,
 *                           its tuple still in `tuples`), in whatever context
 *                           closed it; the owner is the last holder's
 *
 * state_flags bits 0x04, 0x20, 0x40 and 0x80 are free for the tool.
 */
#ifndef PYTRACER_SOCKOWNER_BPF_H
#define PYTRACER_SOCKOWNER_BPF_H

#ifndef SOCK_INFO_TOOL_FIELDS
#define SOCK_INFO_TOOL_FIELDS
#endif

/* ---- entries ---------------------------------------------------------------------- */
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
#define SI_ACCEPT_SHOWN	0x04	/* the first owner was announced (tcpsnoop: EV_ACCEPT went out, see adopt) */
/* state_flags: written at creation and by the state/close handler */
#define SI_TUPLE_SET	0x01	/* `tuple` holds a key we inserted into `tuples` */
#define SI_CLOSED	0x02	/* reached TCP_CLOSE; kept until destroy for a trailing RST */
#define SI_PASSIVE	0x08	/* a listener's child, registered when it was created */
#define SI_ESTABLISHED	0x10	/* passive child: reached ESTABLISHED */


/*
 * The flags are split by writer instead of one word so that contexts that
 * update an entry in place concurrently (a process refreshing the owner while
 * softirq counts a received segment) never clobber each other's bits without
 * needing atomics.
 */
#include "owner.bpf.h"	/* struct owner, owner_pass(), current_owner() */
#include "fd.bpf.h"	/* a descriptor -> its file -> its TCP socket */
#include "nest.bpf.h"	/* TP_BTF_NESTABLE */

struct sock_info {
	__u64 start_ns;		/* 0 = connection predates the tracer */
	__u64 sk;		/* the socket (in tcpsnoop's `ended`: the one that closed) */
	struct owner o;
	__u32 netns;
	__u8 state_flags;
	__u8 _pad[3];
	struct tuple tuple;
	SOCK_INFO_TOOL_FIELDS	/* the including tool's members */
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

#include "syscall_nr.bpf.h"	/* NR_read, NR_write, ... of the target architecture */

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

/* ---- the including tool's hooks (see the top of this file) ------------------------------ */
static __always_inline void sockowner_on_tuple(const struct tuple *t);
static __always_inline void sockowner_on_owner(__u64 skp, struct sock_info *si, struct owner *o,
					       int first, int was_unknown);
static __always_inline void sockowner_on_close(__u64 skp, struct sock_info *si, int oldstate);

/* ---- entries -------------------------------------------------------------------- */
static __always_inline void insert_tuple(struct sock_info *si, __u64 skp)
{
	sockowner_on_tuple(&si->tuple);	/* tcpsnoop: a live connection on this tuple ends a closed predecessor's */
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
 * Makes `current` the owner of an existing entry (process context only).  An
 * owner that was unknown is thereby resolved, and a passive socket's first
 * owner announced: the tool's sockowner_on_owner() does both (tcpsnoop: a
 * passive socket not shown yet with EV_ACCEPT, any other with EV_OWNER, and
 * Python flushes the records it held back).  `accepted` (from accept())
 * announces once.
 */
static __always_inline void adopt(__u64 skp, struct sock_info *si, int accepted)
{
	int was_unknown = !(si->o.flags & SI_OWNER_KNOWN);
	int shown = si->o.flags & SI_ACCEPT_SHOWN;
	struct owner o;

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
	/* the tool announces the owner (EV_ACCEPT when first, else EV_OWNER) and publishes it */
	sockowner_on_owner(skp, si, &o, !shown && (accepted || (si->state_flags & SI_PASSIVE)), was_unknown);
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
static __always_inline void state_change(struct sock *sk, int oldstate, int newstate)
{
	__u64 skp = (__u64)sk;
	struct sock_info *si;
	struct sock_info fresh;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return;

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		/* connect(): runs in the connecting task; no local port yet */
		init_entry(&fresh, skp, 1, 0, bpf_ktime_get_ns());
		fresh.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		bpf_map_update_elem(&socks, &skp, &fresh, BPF_ANY);
		return;
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
		return;
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
			return;
		}
		/* created before the tracer started: owner unknown */
		init_entry(&fresh, skp, 0, 1, bpf_ktime_get_ns());
		fresh.state_flags |= SI_PASSIVE | SI_ESTABLISHED;
		if (bpf_map_update_elem(&socks, &skp, &fresh, BPF_ANY))
			return;
		si = bpf_map_lookup_elem(&socks, &skp);
		if (si && (si->state_flags & SI_TUPLE_SET))
			insert_tuple(si, skp);
		return;
	}

	si = bpf_map_lookup_elem(&socks, &skp);
	if (!si || (si->state_flags & SI_CLOSED))
		return;
	/* close() and shutdown() by the socket's last holder, under its lock */
	adopt_if_locked(skp, si);
	if (newstate != TCP_CLOSE)
		return;
	/*
	 * A listener's child closed before it ever was a connection: never
	 * established, never on the wire as itself, never held.  When two CPUs
	 * complete one handshake (the ACK and the first data segment), each
	 * clones a child and the loser is closed at once (inet_ehash_nolisten);
	 * it has the winner's tuple and nothing of its own to report.
	 */
	if (oldstate == TCP_SYN_RECV && !(si->o.flags & SI_OWNER_KNOWN) &&
	    (si->state_flags & (SI_PASSIVE | SI_ESTABLISHED | SI_TUPLE_SET)) == SI_PASSIVE) {
		bpf_map_delete_elem(&socks, &skp);
		return;
	}
	si->state_flags |= SI_CLOSED;
	sockowner_on_close(skp, si, oldstate);	/* the tool's record of the connection */
	if (si->state_flags & SI_TUPLE_SET)
		tuple_release(&si->tuple, skp);
}

/* connect() and close() change state with softirqs enabled: changes nest (nest.bpf.h) */
TP_BTF_NESTABLE(on_state, "inet_sock_set_state", sk, oldstate << 8 | newstate,
		state_change(sk, oldstate, newstate),
		struct sock *sk, int oldstate, int newstate)

/* The socket is being freed: forget it (its address may be reused at once). */
static __always_inline void forget_sock(struct sock *sk)
{
	__u64 skp = (__u64)sk;
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skp);

	if (!si)
		return;
	if (si->state_flags & SI_TUPLE_SET)
		tuple_release(&si->tuple, skp);
	bpf_map_delete_elem(&socks, &skp);
}

/* freed in process context (close()) and in softirq (the last ACK): nests too */
TP_BTF_NESTABLE(on_destroy, "tcp_destroy_sock", sk, 0, forget_sock(sk), struct sock *sk)

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

/*
 * Descriptors [first, first + FD_CHUNK) of the table at `fds` (those below
 * `max`); 1 when the table ends in this chunk.  A global function too, so that
 * the verifier walks a loop of FD_CHUNK and one of MAX_WALK_FDS / FD_CHUNK
 * rather than one of MAX_WALK_FDS: it keeps a state per iteration at the loop
 * head and compares each new one with all of them, so one long loop costs
 * the square of its length (~13x the load time of the whole program).
 */
#define FD_CHUNK	32
__noinline int walk_fd_chunk(__u64 fds, __u32 first, __u32 max, __u32 tgid, __u32 what)
{
	for (__u32 i = 0; i < FD_CHUNK; i++) {
		struct file *f = 0;

		if (first + i >= max)
			return 1;
		bpf_probe_read_kernel(&f, sizeof(f), (struct file **)fds + first + i);
		if (f)
			walked_fd((__u64)f, tgid, what);
	}
	return 0;
}

static __always_inline void walk_fds(struct task_struct *task, __u32 what)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	__u64 fds;
	__u32 max;

	if (!fdt)
		return;
	max = BPF_CORE_READ(fdt, max_fds);
	fds = (__u64)BPF_CORE_READ(fdt, fd);
	for (__u32 c = 0; c < MAX_WALK_FDS / FD_CHUNK; c++)
		if (walk_fd_chunk(fds, c * FD_CHUNK, max, tgid, what))
			break;
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
 * the fd is the first argument, regs->di on x86_64.  Returns the socket of a
 * read/write/send/recv call on a TCP socket (its owner refreshed), else 0.
 */
static __always_inline __u64 syscall_entry_owner(struct pt_regs *regs, long id)
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
	return skp;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(fb_sys_enter, struct pt_regs *regs, long id)
{
	syscall_entry_owner(regs, id);
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

#endif /* PYTRACER_SOCKOWNER_BPF_H */
