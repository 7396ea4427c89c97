/* SPDX-License-Identifier: GPL-2.0 */
/*
 * enginetest.h - record produced by enginetest.bpf.c, a synthetic event
 * source for engine tests and benchmarks (no networking involved).
 *
 * One record per getppid() call made by the process whose tgid Python wrote
 * into `target_tgid`.  32 bytes, naturally aligned, no padding.
 *
 *   seq    0, 1, 2, ... in reservation order (a .bss counter, atomically
 *          incremented, so gaps mean reserve failures, counted in `lost`)
 *   ts_ns  bpf_ktime_get_ns() (CLOCK_MONOTONIC)
 *   tgid   the caller's tgid, read from task_struct with CO-RE
 *   cpu    CPU the call ran on
 *   arg    seq ^ arg_magic, arg_magic being a .data variable
 *          (initially ENGINETEST_ARG_MAGIC) computed by a .text subprogram
 */
#ifndef PYTRACER_ENGINETEST_H
#define PYTRACER_ENGINETEST_H

#define ENGINETEST_ARG_MAGIC 0x7079747261636572ULL	/* "pytracer" */

struct probe_event {
	__u64 seq;
	__u64 ts_ns;
	__u32 tgid;
	__u32 cpu;
	__u64 arg;
};

#endif /* PYTRACER_ENGINETEST_H */
