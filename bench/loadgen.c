/* Load generator for the pytracer benchmarks (bench only; pytracer itself needs no compiler).
 *
 *   loadgen server PORT RESP             accept loop (threads); per connection: read the request, send RESP
 *                                        bytes, read until EOF, close.  Prints "READY" when listening.
 *   loadgen sink PORT                    accept loop; read everything until EOF.  Prints "READY".
 *   loadgen client HOST PORT CONC SECONDS RATE REQ RESP
 *                                        CONC threads of short connections (connect, send REQ, read RESP,
 *                                        close) for SECONDS; RATE connections/s in total (0 = flat out).
 *   loadgen stream HOST PORT CONNS SECONDS RATE MSG
 *                                        CONNS connections with TCP_NODELAY, each write() MSG bytes; RATE
 *                                        writes/s in total (0 = flat out).
 *   loadgen producer SECONDS RATE        waits for a line on stdin, then getppid() RATE times/s (0 = flat out)
 *
 * Clients print one line: "done N elapsed_s S errors E".  Exit status 0 on success.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	double d = t - now();
	if (d <= 0)
		return;
	struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
	nanosleep(&ts, NULL);
}

static int read_n(int fd, char *buf, size_t cap, long n)
{
	while (n > 0) {
		ssize_t r = read(fd, buf, (size_t)n < cap ? (size_t)n : cap);
		if (r <= 0)
			return -1;
		n -= r;
	}
	return 0;
}

static int write_n(int fd, const char *buf, size_t cap, long n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, (size_t)n < cap ? (size_t)n : cap);
		if (w <= 0)
			return -1;
		n -= w;
	}
	return 0;
}

/* ---- servers ------------------------------------------------------------------------------------------ */

static int listen_fd;
static long resp_bytes;
static int sink_mode;

static void *serve(void *arg)
{
	static char buf[1 << 16];   /* contents never matter */
	char local[1 << 16];
	(void)arg;
	for (;;) {
		int c = accept(listen_fd, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			usleep(1000);
			continue;
		}
		if (sink_mode) {
			while (read(c, local, sizeof local) > 0)
				;
		} else {
			ssize_t r = read(c, local, sizeof local);          /* the request */
			if (r > 0 && write_n(c, buf, sizeof buf, resp_bytes) == 0)
				while (read(c, local, sizeof local) > 0)   /* until the client closes */
					;
		}
		close(c);
	}
	return NULL;
}

static int run_server(int port, int threads)
{
	struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
	int one = 1, zero = 0;
	listen_fd = socket(AF_INET6, SOCK_STREAM, 0);
	setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	setsockopt(listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
	if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) || listen(listen_fd, 4096)) {
		perror("loadgen: bind/listen");
		return 1;
	}
	for (int i = 0; i < threads; i++) {
		pthread_t t;
		pthread_create(&t, NULL, serve, NULL);
	}
	printf("READY\n");
	fflush(stdout);
	for (;;)
		pause();
}

/* ---- clients ------------------------------------------------------------------------------------------ */

static struct sockaddr_storage dst;
static socklen_t dst_len;
static int conc;
static double t_start, t_end, per_thread_interval;
static long req_bytes, msg_bytes;
static atomic_long done_count, error_count;

static int resolve(const char *host, int port)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res;
	char p[16];
	snprintf(p, sizeof p, "%d", port);
	if (getaddrinfo(host, p, &hints, &res)) {
		fprintf(stderr, "loadgen: bad address %s\n", host);
		return -1;
	}
	memcpy(&dst, res->ai_addr, res->ai_addrlen);
	dst_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static void *short_conns(void *arg)
{
	static char buf[1 << 16];
	char in[1 << 16];
	long idx = (long)arg, n = 0, err = 0;
	double next = t_start + per_thread_interval * idx / conc;
	while (1) {
		if (per_thread_interval > 0) {
			sleep_until(next);
			next += per_thread_interval;
		}
		if (now() >= t_end)
			break;
		int s = socket(dst.ss_family, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (struct sockaddr *)&dst, dst_len) ||
		    write_n(s, buf, sizeof buf, req_bytes) || read_n(s, in, sizeof in, resp_bytes))
			err++;
		else
			n++;
		if (s >= 0)
			close(s);
	}
	atomic_fetch_add(&done_count, n);
	atomic_fetch_add(&error_count, err);
	return NULL;
}

static void *stream_conn(void *arg)
{
	static char buf[1 << 16];
	long idx = (long)arg, n = 0, err = 0;
	int one = 1;
	int s = socket(dst.ss_family, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&dst, dst_len)) {
		atomic_fetch_add(&error_count, 1);
		return NULL;
	}
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	const int batch = 32;
	double next = t_start + per_thread_interval * batch * idx / conc;
	while (1) {
		if (per_thread_interval > 0) {
			sleep_until(next);
			next += per_thread_interval * batch;
		}
		if (now() >= t_end)
			break;
		for (int i = 0; i < batch; i++) {
			if (write_n(s, buf, sizeof buf, msg_bytes))
				err++;
			else
				n++;
		}
	}
	close(s);
	atomic_fetch_add(&done_count, n);
	atomic_fetch_add(&error_count, err);
	return NULL;
}

static int run_clients(void *(*fn)(void *), double seconds, double rate)
{
	pthread_t *t = calloc(conc, sizeof *t);
	t_start = now();
	t_end = t_start + seconds;
	per_thread_interval = rate > 0 ? conc / rate : 0;
	for (long i = 0; i < conc; i++)
		pthread_create(&t[i], NULL, fn, (void *)i);
	for (int i = 0; i < conc; i++)
		pthread_join(t[i], NULL);
	double el = now() - t_start;
	printf("done %ld elapsed_s %.6f errors %ld\n", (long)done_count, el, (long)error_count);
	return 0;
}

/* ---- synthetic producer for the engine benchmark ------------------------------------------------------ */

static int run_producer(double seconds, double rate)
{
	char line[64];
	long n = 0;
	if (!fgets(line, sizeof line, stdin))
		return 1;
	double t0 = now(), end = t0 + seconds, next = t0;
	const long batch = 256;
	double step = rate > 0 ? batch / rate : 0;
	while (1) {
		if (step > 0) {
			sleep_until(next);
			next += step;
		}
		if (now() >= end)
			break;
		for (long i = 0; i < batch; i++)
			syscall(SYS_getppid);
		n += batch;
	}
	printf("done %ld elapsed_s %.6f errors 0\n", n, now() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "server")) {
		resp_bytes = atol(argv[3]);
		return run_server(atoi(argv[2]), 128);
	}
	if (argc == 3 && !strcmp(argv[1], "sink")) {
		sink_mode = 1;
		return run_server(atoi(argv[2]), 64);
	}
	if (argc == 9 && !strcmp(argv[1], "client")) {
		if (resolve(argv[2], atoi(argv[3])))
			return 2;
		conc = atoi(argv[4]);
		req_bytes = atol(argv[7]);
		resp_bytes = atol(argv[8]);
		return run_clients(short_conns, atof(argv[5]), atof(argv[6]));
	}
	if (argc == 8 && !strcmp(argv[1], "stream")) {
		if (resolve(argv[2], atoi(argv[3])))
			return 2;
		conc = atoi(argv[4]);
		msg_bytes = atol(argv[7]);
		return run_clients(stream_conn, atof(argv[5]), atof(argv[6]));
	}
	if (argc == 4 && !strcmp(argv[1], "producer"))
		return run_producer(atof(argv[2]), atof(argv[3]));
	fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
	return 2;
}
