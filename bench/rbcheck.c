/* Diagnostic for the engine benchmark: the same synthetic producer and BPF object, consumed by libbpf's
 * ring_buffer__poll (C) instead of pytracer's RingBuffer, to tell kernel-side losses from consumer ones.
 *
 *   rbcheck OBJ RATE SECONDS RINGBUF_BYTES    prints "produced N read N lost N"
 *
 * Build: cc -O2 -o rbcheck rbcheck.c -lbpf   (needs libbpf-dev; bench only).
 */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long nread;

static int on_rec(void *ctx, void *data, size_t len)
{
	(void)ctx; (void)data; (void)len;
	nread++;
	return 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: rbcheck OBJ RATE SECONDS RINGBUF_BYTES\n");
		return 2;
	}
	double rate = atof(argv[2]), seconds = atof(argv[3]);
	int go[2], res[2];
	if (pipe(go) || pipe(res))
		return 1;
	pid_t child = fork();
	if (child == 0) {           /* producer on CPU 1 */
		cpu_set_t set;
		char c;
		long n = 0;
		CPU_ZERO(&set);
		CPU_SET(1, &set);
		sched_setaffinity(0, sizeof set, &set);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		double t0 = now(), end = t0 + seconds, next = t0, step = rate > 0 ? 256 / rate : 0;
		while (now() < end) {
			if (step > 0) {
				while (now() < next)
					;
				next += step;
			}
			for (int i = 0; i < 256; i++)
				syscall(SYS_getppid);
			n += 256;
		}
		if (write(res[1], &n, sizeof n) != sizeof n)
			_exit(1);
		_exit(0);
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	sched_setaffinity(0, sizeof set, &set);
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj)
		return 1;
	struct bpf_map *m;
	bpf_object__for_each_map(m, obj) {
		if (strstr(bpf_map__name(m), ".rodata")) {
			size_t sz;
			char *ro = (char *)bpf_map__initial_value(m, &sz);
			struct btf *btf = bpf_object__btf(obj);
			const struct btf_type *t = btf__type_by_id(btf, btf__find_by_name_kind(btf, ".rodata",
												    BTF_KIND_DATASEC));
			const struct btf_var_secinfo *v = btf_var_secinfos(t);
			unsigned int tgid = child;
			for (int i = 0; i < btf_vlen(t); i++, v++)
				if (!strcmp(btf__name_by_offset(btf, btf__type_by_id(btf, v->type)->name_off),
					    "target_tgid"))
					memcpy(ro + v->offset, &tgid, sizeof tgid);
		}
	}
	bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "events"), atoi(argv[4]));
	struct bpf_program *p;
	bpf_object__for_each_program(p, obj)
		bpf_program__set_autoload(p, !strcmp(bpf_program__name(p), "getppid_probe"));
	if (bpf_object__load(obj))
		return 1;
	struct bpf_link *l = bpf_program__attach(bpf_object__find_program_by_name(obj, "getppid_probe"));
	if (!l)
		return 1;
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj, "events")),
						  on_rec, NULL, NULL);
	if (write(go[1], "g", 1) != 1)
		return 1;
	int status;
	while (waitpid(child, &status, WNOHANG) == 0)
		ring_buffer__poll(rb, 50);
	ring_buffer__consume(rb);
	long produced = 0;
	if (read(res[0], &produced, sizeof produced) != sizeof produced)
		return 1;
	int lost_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "lost"));
	int ncpu = libbpf_num_possible_cpus();
	unsigned long long vals[ncpu], lost = 0;
	unsigned int zero = 0;
	if (bpf_map_lookup_elem(lost_fd, &zero, vals) == 0)
		for (int i = 0; i < ncpu; i++)
			lost += vals[i];
	printf("produced %ld read %ld lost %llu\n", produced, nread, lost);
	return 0;
}
