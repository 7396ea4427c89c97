/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nest.bpf.h - a tp_btf program that does not lose the runs that nest in it.
 *
 * The kernel runs a tracing program at most once per CPU at a time: a run
 * that would nest in a running one is skipped (and counted in the program's
 * recursion_misses).  Some tracepoints do nest: a socket's state change, or
 * its destruction, in process context with softirqs enabled (connect(),
 * close(), the backlog that release_sock() processes) can be interrupted by a
 * softirq that changes or destroys another socket.
 *
 * TP_BTF_NESTABLE(name, tracepoint, obj, aux, call, args...) defines two
 * programs on the tracepoint, in this order (the loader attaches them in the
 * object's order and a tracepoint runs its programs in the order they were
 * attached): `name` makes `call` for every run it gets, noting first what
 * tells its runs apart (`obj`, the socket, and `aux`, say its two states); `name_nested` makes `call` for the runs `name` did
 * not note, which are those the kernel skipped for it, and counts them in the
 * per-CPU map `name_nest`.  `name` notes its last two runs: `name_nested`
 * can be interrupted by a run of `name` between the two of one tracepoint
 * hit, and nothing nests deeper (the tracepoint does not fire in hard
 * interrupts).  A run skipped for `name_nested` is one `name` made; user
 * space reports as lost the misses of `name` less the runs of `name_nested`
 * (toolkit/losses.py).
 */
#ifndef PYTRACER_NEST_BPF_H
#define PYTRACER_NEST_BPF_H

struct nest_run {
	__u64 obj;
	__u32 aux;
	__u32 _pad;
};

struct nest_state {
	struct nest_run recent[2];	/* the last runs of `name` */
	__u64 handled;			/* runs made by `name_nested` */
	__u32 next;
	__u32 _pad;
};

static __always_inline int nest_same(const struct nest_run *r, __u64 obj, __u32 aux)
{
	return r->obj == obj && r->aux == aux;
}

#define TP_BTF_NESTABLE(name, tp, run_obj, run_aux, call, ...)			\
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
	if (n) {							\
		n->recent[n->next & 1].obj = (__u64)(run_obj);		\
		n->recent[n->next & 1].aux = (run_aux);			\
		n->next++;						\
	}								\
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
	if (!n || nest_same(&n->recent[0], (__u64)(run_obj), (run_aux)) || \
	    nest_same(&n->recent[1], (__u64)(run_obj), (run_aux)))	\
		return 0;						\
	n->handled++;							\
	call;								\
	return 0;							\
}

#endif
