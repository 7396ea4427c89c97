// SPDX-License-Identifier: GPL-2.0
/*
 * invalid.bpf.c - compiles cleanly, but the kernel verifier MUST reject it.
 *
 * Used by the verifier-log test: loading `bad_lookup` has to fail with a
 * VerifierError whose log names the offending instruction (a dereference of
 * bpf_map_lookup_elem()'s result, which may be NULL, without a check:
 * "invalid mem access 'map_value_or_null'") and, through the BTF line info,
 * the C line below marked HERE.
 *
 * The map is a HASH on purpose: since Linux 6.14 the verifier knows that an
 * ARRAY lookup with a constant, in-range key cannot return NULL, so the same
 * bug on an ARRAY is accepted.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int bad_lookup(void *ctx)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&hits, &key);

	*v += 1;	/* HERE: no NULL check */
	return 0;
}
