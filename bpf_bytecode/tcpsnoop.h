/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tcpsnoop.h - the ONE definition of tcpsnoop's record and its constants.
 *
 * Every record in the `events` ring buffer is exactly one struct
 * tcpsnoop_event.  Python has no copy of it: the loader builds the record's
 * decoder from the object's BTF (pytracer/records.py; `python -m
 * pytracer.records pytracer/bpf/tcpsnoop.bpf.o tcpsnoop_event` prints its
 * offsets), and reads the enums below from BTF too, so they are enums, not
 * #defines (see __unused_event and __unused_enums in tcpsnoop.bpf.c, which keep
 * them in BTF).  Members named _... are padding.
 *
 * Field order: first what changes from record to record, then the connection's identity (sk through
 * family: socket, owner and addresses), contiguous so that user space can take those 80 bytes as one
 * key and format a connection's constant columns once (see pytracer/tcpsnoop.py).  All fields are written
 * after the record is zeroed, so padding is always zero and equal identities compare equal.
 */
#ifndef PYTRACER_TCPSNOOP_H
#define PYTRACER_TCPSNOOP_H

enum ev_type {
	EV_CONNECT = 1,		/* we sent a SYN (no ACK) on a tracked socket */
	EV_ACCEPT = 2,		/* accept()/accept4() returned a TCP socket */
	EV_SEND = 3,		/* a segment sent on a tracked socket */
	EV_RECV = 4,		/* a segment received for a tracked socket */
	EV_RESET = 5,		/* a RST sent or received on a tracked socket */
	EV_CLOSE = 6,		/* a tracked socket reached TCP_CLOSE */
	EV_RESET_CLOSED_PORT = 7, /* we answered a SYN to a closed port with RST+ACK */
	EV_HANDSHAKE = 8,	/* a packet of a passive handshake (SYN, SYN-ACK, the ACK that
				   completes it) before any socket owner exists */
	EV_OWNER = 9,		/* a socket whose owner was unknown has one now (no packet) */
};

/* attr bits */
enum ev_attr {
	ATTR_OWNER_UNKNOWN = 0x01,	/* no process is known to hold the socket now (not yet
					   accepted, or its owner let go of it): owner fields are empty */
	ATTR_RETRANS = 0x02,		/* segment carried payload but none of it was new */
	ATTR_DISCARD = 0x04,		/* EV_ACCEPT/EV_OWNER: the owner fails the filters; drop
					   held-back OWNER_UNKNOWN records of this connection */
};

/* dir */
enum ev_dir {
	DIR_SENT = 0,			/* "->" */
	DIR_RECEIVED = 1,		/* "<-" */
};

struct tcpsnoop_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 tx_bytes;		/* new payload bytes sent so far (retransmits excluded) */
	__u64 rx_bytes;		/* new payload bytes received so far */
	__u64 start_ns;		/* when the connection started; 0 = before the tracer */
	__u64 cgroup_id;	/* owner's cgroup v2 id */
	__u64 capture;		/* -w: id of this packet's capture_hdr in `captures` (capture.bpf.h); 0 none */
	__u32 size;		/* Ethernet-wire size: IP packet + 14, as a tap on the device sees it */
	__u32 payload;		/* TCP payload bytes in this skb */
	__u8 type;		/* enum ev_type */
	__u8 dir;		/* 0 = sent (->), 1 = received (<-) */
	__u8 tcp_flags;		/* enum tcp_flag bits (kernel_types.h) */
	__u8 attr;		/* ATTR_* bits */
	/*
	 * With TSO/GSO on send (and GRO, or veth/loopback pass-through, on
	 * receive) one skb stands for gso_segs wire packets of gso_size payload
	 * bytes each (the last one shorter).  gso_segs is 1 and gso_size 0 for
	 * an ordinary packet.
	 */
	__u16 gso_segs;
	__u16 gso_size;
	/* --- the connection's identity: contiguous, see above --- */
	__u64 sk;		/* kernel socket address */
	__u32 pid;		/* owner's tgid; 0 if unknown */
	__u32 uid;		/* owner's uid */
	__u32 netns;		/* network namespace inode number */
	__u16 lport;		/* host byte order */
	__u16 rport;		/* host byte order */
	__u8 laddr[16];		/* IPv4 in the first 4 bytes */
	__u8 raddr[16];
	char comm[16];		/* owner's comm */
	__u8 family;		/* AF_INET or AF_INET6 as seen on the packet/socket */
	__u8 _pad[7];
};

/* The enums user space reads from BTF, in one type that an unused pointer keeps there. */
struct tcpsnoop_enums {
	enum ev_type type;
	enum ev_attr attr;
	enum ev_dir dir;
	enum tcp_flag tcp_flags;
};

#endif /* PYTRACER_TCPSNOOP_H */
