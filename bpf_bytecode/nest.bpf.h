/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nest.bpf.h - a tp_btf program that does not lose the runs that nest in it.
 *
 * The kernel runs a tracing program at most once per CPU at a time: a run
 * that would nest in a running one is skipped (and counted in the program's
 * recursion_misses).  Some tracepoints do nest: a socket's state change, or
 * its destruction, in process context with softirqs enabled (connect(),
 * close(), the backlog that release_sock() processes) can be interrupted by a
 * softirq that changes or destroys other sockets.
 *
 * TP_BTF_NESTABLE(name, tracepoint, obj, aux, call, args...) defines two
 * programs on the tracepoint, in this order (the loader attaches them in the
 * object's order, and a tracepoint runs its programs in the order they were
 * attached):
 *   name         notes the run (`obj`, the socket, and `aux`, say its two
 *                states, tell runs apart) in a free slot of its CPU's table,
 *                then makes `call`;
 *   name_nested  runs next for the same tracepoint hit: if `name` noted it,
 *                frees the slot; if not, the kernel skipped `name` for this
 *                hit (it was running below, interrupted), so it makes `call`
 *                itself and counts that in the per-CPU map `name_nest`.
 * A slot lives from one program to the other of one hit, so a socket whose
 * address was used before is never mistaken for its predecessor, and a
 * softirq between the two (many hits, each noted and freed) leaves it alone.
 * A hit can be skipped for name_nested too, when it nests in name_nested's
 * own check; `name` made that run, and its slot stays behind: slots carry the
 * count of runs when noted, and one noted NEST_STALE runs ago is free again.
 * The tracepoint does not fire in hard interrupts: nothing nests deeper than
 * one softirq.  User space reports as lost the misses of `name` less the runs
 * of `name_nested` (toolkit/losses.py).
 */
#ifndef PYTRACER_NEST_BPF_H
#define PYTRACER_NEST_BPF_H

#define NEST_SLOTS 4
#define NEST_STALE 64

struct nest_run {
	__u64 obj;		/* 0: free */
	__u32 aux;
	__u32 seq;		/* runs of `name` when noted */
};

struct nest_state {
	struct nest_run slot[NEST_SLOTS];
	__u64 handled;		/* runs made by `name_nested` */
	__u32 seq;		/* runs of `name` */
	__u32 _pad;
};

/* `name`: note the run in a free (or stale, or else the oldest) slot */
static __always_inline void nest_note(struct nest_state *n, __u64 obj, __u32 aux)
{
	__u32 i, pick = 0, oldest = 0;

	n->seq++;
	for (i = 0; i < NEST_SLOTS; i++) {
		__u32 age = n->seq - n->slot[i].seq;

		if (!n->slot[i].obj || age > NEST_STALE) {
			pick = i;
			break;
		}
		if (age > oldest) {
			oldest = age;
			pick = i;
		}
	}
	if (pick >= NEST_SLOTS)		/* (for the verifier) */
		return;
	n->slot[pick].obj = obj;
	n->slot[pick].aux = aux;
	n->slot[pick].seq = n->seq;
}

/* `name_nested`: whether `name` noted this run (its slot is freed) */
static __always_inline int nest_take(struct nest_state *n, __u64 obj, __u32 aux)
{
	__u32 i;

	for (i = 0; i < NEST_SLOTS; i++) {
		if (n->slot[i].obj == obj && n->slot[i].aux == aux) {
			n->slot[i].obj = 0;
			return 1;
		}
	}
	return 0;
}

#define TP_BTF_NESTABLE(name, tp, run_obj, run_aux, call, ...)		\
struct {								\
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);			\
	__uint(max_entries, 1);						\
	__type(key, __u32);						\
	__type(value, struct nest_state);				\
} name##_nest SEC(".maps");						\
									\
SEC("tp_btf/" tp)							\
int BPF_PROG(name, ##__VA_ARGS__)					\
{									\
	__u32 zero = 0;							\
	struct nest_state *n = bpf_map_lookup_elem(&name##_nest, &zero); \
									\
	if (n)								\
		nest_note(n, (__u64)(run_obj), (run_aux));		\
	call;								\
	return 0;							\
}									\
									\
SEC("tp_btf/" tp)							\
int BPF_PROG(name##_nested, ##__VA_ARGS__)				\
{									\
	__u32 zero = 0;							\
	struct nest_state *n = bpf_map_lookup_elem(&name##_nest, &zero); \
									\
	if (!n || nest_take(n, (__u64)(run_obj), (run_aux)))		\
		return 0;						\
	n->handled++;							\
	call;								\
	return 0;							\
}

#endif
