// SPDX-License-Identifier: GPL-2.0
/*
 * CO-RE fixture for tests/test_core.py and tests/test_btf.py.
 *
 * The local views of kernel types below are deliberately laid out differently from the kernel's
 * (fields reordered, a member the kernel lacks, a narrower/wider field), so a correct relocation
 * changes almost every offset and a missing one stays visible.
 *
 * Built twice by the tests:
 *   clang-16 -O2 -g -target bpf                -> the program (local BTF + CO-RE relocations)
 *   clang-16 -O2 -g -target bpf -DCORE_TARGET  -> a small "kernel" BTF with ambiguous candidates
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define __core __attribute__((preserve_access_index))

#ifndef CORE_TARGET

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__u32 u6_addr32[4];
	} in6_u;
} __core;

/* flavored name: matches the kernel's struct sock_common */
struct sock_common___mine {
	unsigned short skc_family;
	union {
		struct {
			__u16 skc_dport;        /* kernel: inside two anonymous levels as well */
			__u16 skc_num;
		};
	};
	unsigned char skc_reuse:4;      /* bitfield, kernel: bits 152..155 */
	unsigned char skc_reuseport:1;
	struct in6_addr skc_v6_daddr;
	long skc_bound_dev_if;          /* kernel: int; signed width change must poison */
	int skc_not_in_kernel;
} __core;

struct sock {
	struct sock_common___mine __sk_common;
	__u8 sk_protocol;               /* kernel: u16; unsigned, so the load is widened */
	int sk_foo;                     /* no such field in the kernel */
	unsigned char sk_kern_sock:1;
} __core;

struct sk_buff {
	unsigned int len;
	struct sock *sk;                /* kernel: inside an anonymous union */
} __core;

struct task_struct {
	int tgid;
	int pid;
} __core;

struct no_such_struct___x {
	int a;
} __core;

/* resolved only against the -DCORE_TARGET build */
struct amb___local {
	int a;
} __core;

struct agree___local {
	int x;
} __core;

struct big___local {
	int a;
} __core;

enum sk_pacing___mine {
	SK_PACING_FQ___mine = 100,
	SK_PACING_BOGUS___mine = 101,
};

/* kernel: ENUM64 with PERF_CONTEXT_KERNEL = (u64)-128 */
enum perf_callchain_context___mine {
	PERF_CONTEXT_KERNEL___mine = 5,
};

enum no_such_enum___x {
	NO_SUCH_VALUE___x = 1,
};

__u64 out[40];
const volatile int cfg_enabled = 1;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("tp_btf/net_dev_queue")
int handle_net_dev_queue(unsigned long long *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[0];
	struct sock *sk;
	struct sock_common___mine *skc;

	if (!cfg_enabled)
		return 0;
	sk = skb->sk;
	if (!sk)
		return 0;
	skc = &sk->__sk_common;

	/* plain loads: FIELD_BYTE_OFFSET on LDX */
	out[0] = skc->skc_family;
	out[1] = skc->skc_dport;
	out[2] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	out[3] = sk->sk_protocol;                       /* 1-byte load becomes 2-byte */
	out[4] = sk->__sk_common.skc_num;

	/* existence checks */
	out[5] = bpf_core_field_exists(sk->sk_foo);
	out[6] = bpf_core_field_exists(skc->skc_family);
	out[7] = bpf_core_field_exists(skc->skc_not_in_kernel);
	if (bpf_core_field_exists(sk->sk_foo))
		out[8] = sk->sk_foo;                    /* dead in the kernel: poisoned */
	out[9] = bpf_core_field_size(skc->skc_v6_daddr);
	out[10] = bpf_core_field_size(sk->sk_protocol);
	out[11] = bpf_core_field_offset(skc->skc_v6_daddr);

	/* bitfields: BYTE_OFFSET/BYTE_SIZE/LSHIFT/RSHIFT/SIGNED */
	out[12] = BPF_CORE_READ_BITFIELD(skc, skc_reuse);
	out[13] = BPF_CORE_READ_BITFIELD(sk, sk_kern_sock);
	out[14] = __builtin_preserve_field_info(skc->skc_bound_dev_if, BPF_FIELD_SIGNED);

	/* types */
	out[15] = bpf_core_type_exists(struct task_struct);
	out[16] = bpf_core_type_exists(struct no_such_struct___x);
	out[17] = bpf_core_type_size(struct task_struct);
	out[18] = bpf_core_type_id_kernel(struct task_struct);
	out[19] = bpf_core_type_id_local(struct task_struct);
	out[20] = bpf_core_type_size(struct no_such_struct___x);

	/* enum values */
	out[21] = bpf_core_enum_value_exists(enum sk_pacing___mine, SK_PACING_FQ___mine);
	out[22] = bpf_core_enum_value_exists(enum sk_pacing___mine, SK_PACING_BOGUS___mine);
	out[23] = bpf_core_enum_value(enum sk_pacing___mine, SK_PACING_FQ___mine);
	out[24] = bpf_core_enum_value(enum perf_callchain_context___mine, PERF_CONTEXT_KERNEL___mine);
	out[25] = bpf_core_enum_value_exists(enum no_such_enum___x, NO_SUCH_VALUE___x);
	if (bpf_core_enum_value_exists(enum sk_pacing___mine, SK_PACING_BOGUS___mine))
		out[26] = bpf_core_enum_value(enum sk_pacing___mine, SK_PACING_BOGUS___mine);

	/* signed field read at a different width: poisoned */
	if (bpf_core_field_exists(skc->skc_bound_dev_if))
		out[27] = skc->skc_bound_dev_if;

	/* pid/tgid through task_struct */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	out[28] = task->tgid;
	out[29] = bpf_core_field_size(task->tgid);
	return 0;
}

SEC("tp_btf/net_dev_queue")
int handle_targets(unsigned long long *ctx)
{
	struct amb___local *a = (struct amb___local *)ctx[0];
	struct agree___local *g = (struct agree___local *)ctx[1];
	struct big___local *b = (struct big___local *)ctx[2];

	out[30] = a->a;
	out[31] = g->x;
	out[32] = b->a;                                 /* target offset does not fit insn->off */
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

#else /* CORE_TARGET: a stand-in kernel BTF */

struct amb { int a; int b; };
struct amb___v2 { int b; int a; };              /* same essential name, a at another offset */
struct agree { int x; int y; };
struct agree___v2 { int x; long long z; };      /* same essential name, x at the same offset */
struct big { char pad[40000]; int a; };         /* a beyond a load's 16-bit offset */

struct amb amb_1;
struct amb___v2 amb_2;
struct agree agree_1;
struct agree___v2 agree_2;
struct big big_1;

#endif
