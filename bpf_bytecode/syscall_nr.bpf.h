/* SPDX-License-Identifier: GPL-2.0 */
/*
 * syscall_nr.bpf.h - the system call numbers the TCP tools look at in
 * raw_syscalls:sys_enter, for the architecture the object is built for
 * (-D__TARGET_ARCH_...).
 */
#ifndef PYTRACER_SYSCALL_NR_BPF_H
#define PYTRACER_SYSCALL_NR_BPF_H

#if defined(__TARGET_ARCH_x86)
/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) */
#define NR_read		0
#define NR_write	1
#define NR_close	3
#define NR_readv	19
#define NR_writev	20
#define NR_sendto	44
#define NR_recvfrom	45
#define NR_sendmsg	46
#define NR_recvmsg	47
#elif defined(__TARGET_ARCH_arm64) || defined(__TARGET_ARCH_riscv)
/* the generic table (include/uapi/asm-generic/unistd.h) */
#define NR_read		63
#define NR_write	64
#define NR_close	57
#define NR_readv	65
#define NR_writev	66
#define NR_sendto	206
#define NR_recvfrom	207
#define NR_sendmsg	211
#define NR_recvmsg	212
#else
#error "syscall_nr.bpf.h: no system call numbers for this __TARGET_ARCH"
#endif

#endif /* PYTRACER_SYSCALL_NR_BPF_H */
