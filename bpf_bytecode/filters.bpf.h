/* SPDX-License-Identifier: GPL-2.0 */
/*
 * filters.bpf.h - the common filters every pytracer tool offers (-p -u -c -P
 * -4 -6 --cgroup), as `const volatile` settings that user space writes into
 * .rodata before load (pytracer/toolkit/filters.py: Filters.rodata()), so the
 * verifier sees disabled filters as constants and they cost nothing; and the
 * checks on a family and on ports.  The checks on a socket's owner are in
 * owner.bpf.h.  Include after the libbpf headers and kernel_types.h.
 */
#ifndef PYTRACER_FILTERS_BPF_H
#define PYTRACER_FILTERS_BPF_H

#define MAX_FILTER_PIDS		8	/* toolkit/filters.py: MAX_PIDS */
#define MAX_FILTER_PORTS	8	/* toolkit/filters.py: MAX_PORTS */
#define TASK_COMM_LEN		16

const volatile __u32 filter_pids[MAX_FILTER_PIDS] = {};
const volatile __u32 n_pids = 0;
const volatile __u32 filter_uid = 0;
const volatile __u8 has_uid = 0;
const volatile char filter_comm[TASK_COMM_LEN] = {};
const volatile __u8 has_comm = 0;
const volatile __u16 filter_ports[MAX_FILTER_PORTS] = {};	/* host order; local or remote */
const volatile __u32 n_ports = 0;
const volatile __u8 filter_family = 0;				/* 0 any, 4, 6 */
const volatile __u64 filter_cgroup_id = 0;
const volatile __u32 filter_cgroup_level = 0;
const volatile __u8 has_cgroup = 0;

static __always_inline int family_pass(__u8 family)
{
	if (filter_family == 4)
		return family == AF_INET;
	if (filter_family == 6)
		return family == AF_INET6;
	return 1;
}

static __always_inline int ports_pass(__u16 lport, __u16 rport)
{
	if (n_ports == 0)
		return 1;
	for (int i = 0; i < MAX_FILTER_PORTS; i++) {
		if (i >= n_ports)
			break;
		if (filter_ports[i] == lport || filter_ports[i] == rport)
			return 1;
	}
	return 0;
}

#endif /* PYTRACER_FILTERS_BPF_H */
