/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fd.bpf.h - from a file descriptor of the current task to its file and
 * from a file to its TCP socket, for the tools that see a socket as a
 * descriptor (a system call's argument or return value, an iterator's file).
 * Include after the libbpf headers (bpf_core_read.h) and kernel_types.h.
 */
#ifndef PYTRACER_FD_BPF_H
#define PYTRACER_FD_BPF_H

/* fd of the current task -> its file (task->files->fdt->fd[fd]), or 0. */
static __always_inline struct file *fd_to_file(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return 0;
	return f;
}

/*
 * A file -> its TCP socket, or 0.  A socket file has an S_IFSOCK inode and
 * its private_data is the struct socket.
 */
static __noinline __u64 file_to_tcp_sk(struct file *f)
{
	struct socket *sock;
	struct sock *sk;

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = (struct socket *)BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP ||
	    BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return 0;
	switch (BPF_CORE_READ(sk, __sk_common.skc_family)) {
	case AF_INET:
	case AF_INET6:
		return (__u64)sk;
	}
	return 0;
}

static __always_inline __u64 fd_to_tcp_sk(__u32 fd)
{
	return file_to_tcp_sk(fd_to_file(fd));
}

#endif /* PYTRACER_FD_BPF_H */
