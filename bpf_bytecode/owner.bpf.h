/* SPDX-License-Identifier: GPL-2.0 */
/*
 * owner.bpf.h - a socket's owner as the TCP tools track it: the process that
 * holds it (pid = tgid, uid, comm, cgroup), taken from the current task in
 * process context, and the owner filters of filters.bpf.h applied to it.
 * Include after filters.bpf.h.
 */
#ifndef PYTRACER_OWNER_BPF_H
#define PYTRACER_OWNER_BPF_H

/* owner.flags; a tool may use the bits above these for its own state */
#define SI_OWNER_KNOWN	0x01
#define SI_CGROUP_MATCH	0x02

struct owner {
	__u64 cgroup_id;
	char comm[TASK_COMM_LEN];
	__u32 pid;
	__u32 uid;
	__u8 flags;		/* SI_OWNER_KNOWN, SI_CGROUP_MATCH, a tool's bits; written last */
	__u8 _pad[7];
};

static __always_inline int owner_filters_active(void)
{
	return n_pids || has_uid || has_comm || has_cgroup;
}

/* Filters on the socket's owner; an unknown owner passes (Python decides later). */
static __always_inline int owner_pass(const struct owner *o)
{
	if (!(o->flags & SI_OWNER_KNOWN))
		return 1;
	if (n_pids) {
		int found = 0;

		for (int i = 0; i < MAX_FILTER_PIDS; i++) {
			if (i >= n_pids)
				break;
			if (filter_pids[i] == o->pid) {
				found = 1;
				break;
			}
		}
		if (!found)
			return 0;
	}
	if (has_uid && o->uid != filter_uid)
		return 0;
	if (has_comm) {
		for (int i = 0; i < TASK_COMM_LEN; i++) {
			if (o->comm[i] != filter_comm[i])
				return 0;
			if (o->comm[i] == 0)
				break;
		}
	}
	if (has_cgroup && !(o->flags & SI_CGROUP_MATCH))
		return 0;
	return 1;
}

/*
 * Whether a task's cgroup (v2) is the --cgroup filter's or below it: its
 * ancestor at the filter's level, from ancestor_ids[] before 6.1 and
 * ancestors[] after (what bpf_get_current_ancestor_cgroup_id() reads; tracing
 * programs may call that helper only from Linux 5.14 on).
 */
static __always_inline int cgroup_matches(struct task_struct *task)
{
	struct cgroup *cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	__u64 anc = 0;

	if (filter_cgroup_level > (__u32)BPF_CORE_READ(cgrp, level))
		return 0;
	if (bpf_core_field_exists(((struct cgroup___ptrs *)cgrp)->ancestors)) {
		struct cgroup *a = 0;

		bpf_probe_read_kernel(&a, sizeof(a), (void *)cgrp +
				      bpf_core_field_offset(struct cgroup___ptrs, ancestors) +
				      filter_cgroup_level * sizeof(a));
		anc = BPF_CORE_READ(a, kn, id);
	} else {
		bpf_probe_read_kernel(&anc, sizeof(anc), (void *)cgrp +
				      bpf_core_field_offset(struct cgroup___ids, ancestor_ids) +
				      filter_cgroup_level * sizeof(anc));
	}
	return anc == filter_cgroup_id;
}

/* The current task as an owner (process context only). */
static __always_inline void current_owner(struct owner *o)
{
	__u8 flags = SI_OWNER_KNOWN;

	__builtin_memset(o, 0, sizeof(*o));
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	if (has_cgroup && cgroup_matches((struct task_struct *)bpf_get_current_task()))
		flags |= SI_CGROUP_MATCH;
	o->flags = flags;
}

#endif /* PYTRACER_OWNER_BPF_H */
