/* SPDX-License-Identifier: GPL-2.0 */
/*
 * capture.bpf.h - the packet bytes behind a record, for `pytracer -w` (pcapng).
 *
 * With `snaplen` set (user space writes it into .rodata before load; 0, the default, compiles every
 * capture branch away: the verifier knows frozen .rodata), a record about a packet is preceded by a
 * `struct capture_hdr` record in the `captures` ring buffer, followed by the packet's first `caplen`
 * bytes: the 14-byte Ethernet header when the device has one (loopback and veth do), then the IP packet.
 * The record says which capture is its own through `tcpsnoop_event.capture` (= capture_hdr.id; 0: none).
 *
 * Only the skb's linear part is read (bpf_probe_read_kernel from skb->head); payload in paged fragments
 * is not reachable from a tracing program, so caplen is then shorter than len: a truncated capture,
 * never padded.  The IP and TCP headers (options included) are always in the linear part.
 */
#ifndef PYTRACER_CAPTURE_BPF_H
#define PYTRACER_CAPTURE_BPF_H

#define CAPTURE_MAX	2048	/* bytes of one packet at most (link header included) */
#define ARPHRD_ETHER	1
#define ARPHRD_LOOPBACK	772

const volatile __u32 snaplen = 0;	/* bytes per packet to capture; 0 = no capture */

/* The header of a capture record; caplen bytes of the packet follow it. */
struct capture_hdr {
	__u64 id;		/* what the tcpsnoop_event's `capture` says (never 0): seq << 16 | cpu << 1 | slot */
	__u64 skb;		/* the skb's address: pairs loopback's send and receive of one packet */
	__u32 len;		/* the packet's length: link header (if captured) + IP packet */
	__u32 caplen;		/* bytes that follow (<= len) */
	__u32 ifindex;
	__u32 netns;		/* the device's network namespace inode */
	__u16 dev_type;		/* ARPHRD_* of the device */
	__u8 link_hlen;		/* 14: the data starts with the Ethernet header; 0: with the IP header */
	__u8 dir;		/* DIR_SENT or DIR_RECEIVED: which hook saw it */
	__u32 _pad;
	char ifname[16];
};


/* Local views of the kernel fields only the capture reads (flavours: matched by name, see the loader). */
struct sk_buff___cap {
	unsigned int len;
	unsigned int data_len;	/* bytes in paged fragments */
	unsigned char *head;
	unsigned char *data;
	__u16 mac_header;
	__u16 network_header;
} __attribute__((preserve_access_index));

struct net_device___cap {
	char name[16];
	int ifindex;
	unsigned short type;
} __attribute__((preserve_access_index));

/* Where a packet's capture starts, noted by the tx/rx hook for emit() to copy. */
struct capture_src {
	const unsigned char *start;	/* link header, or the network header */
	struct net_device___cap *dev;
	__u32 len;			/* bytes from start to the end of the packet */
	__u32 avail;			/* of them, in the linear part */
};

struct capture_buf {
	struct capture_src src;
	__u64 seq;			/* captures made from this slot on this CPU */
	struct capture_hdr h;		/* the record: h and then data go into the ring */
	__u8 data[CAPTURE_MAX];
};

/* Per CPU, one slot per hook: a tp_btf program does not nest in itself on one CPU, but on_rx (softirq)
 * can interrupt on_tx.  (The BPF stack has no room for any of this.) */
#define CAPTURE_SLOT_TX	0
#define CAPTURE_SLOT_RX	1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct capture_buf);
} capture_scratch SEC(".maps");

/* One page when unused; user space sizes it for -w. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} captures SEC(".maps");

/* captures that did not fit in `captures` (their packet's record goes out with capture 0) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} capture_lost SEC(".maps");

/* Keep the header in BTF for user space. */
const struct capture_hdr *const __unused_capture_hdr = 0;

/*
 * Notes where the packet of an skb whose network header is at `nh` starts, in `slot`.  The Ethernet
 * header is included when it sits right before the network header on a device that has one.  Returns
 * the slot + 1 (what struct pkt keeps), 0 when not capturing.
 */
static __always_inline __u8 capture_source(__u32 slot, void *skbp, void *devp, const unsigned char *nh)
{
	struct sk_buff___cap *skb = skbp;
	struct net_device___cap *dev = devp;
	const unsigned char *head, *data, *end_linear, *mac, *start;
	unsigned int len, data_len;
	unsigned short type;
	__u16 mac_off;
	struct capture_buf *b;
	__u8 link_hlen = 0;

	if (!snaplen)
		return 0;
	b = bpf_map_lookup_elem(&capture_scratch, &slot);
	if (!b)
		return 0;
	head = BPF_CORE_READ(skb, head);
	data = BPF_CORE_READ(skb, data);
	len = BPF_CORE_READ(skb, len);
	data_len = BPF_CORE_READ(skb, data_len);
	mac_off = BPF_CORE_READ(skb, mac_header);
	end_linear = data + (len - data_len);
	mac = head + mac_off;
	type = BPF_CORE_READ(dev, type);
	start = nh;
	if ((type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK) && mac_off != 0xffff && mac + ETH_HLEN == nh) {
		start = mac;
		link_hlen = ETH_HLEN;
	}
	if (start > data + len)
		return 0;
	b->src.start = start;
	b->src.dev = dev;
	b->src.len = (__u32)(data + len - start);
	b->src.avail = end_linear > start ? (__u32)(end_linear - start) : 0;
	b->h.skb = (__u64)skbp;
	b->h.link_hlen = link_hlen;
	b->h.dir = slot == CAPTURE_SLOT_RX;
	return slot + 1;
}

/*
 * Copies the packet noted in slot `slot1 - 1` into `captures`, before its record is reserved (so the
 * capture is there when user space reads the record).  `hdr_len` = IP + TCP header bytes: always
 * captured, whatever snaplen says.  Returns the capture's id, 0 if there is none.
 */
static __always_inline __u64 capture_packet(__u8 slot1, __u32 netns, __u32 hdr_len)
{
	struct capture_buf *b;
	struct net_device___cap *dev;
	__u32 slot, want, n;

	if (!snaplen || !slot1)
		return 0;
	slot = slot1 - 1;
	b = bpf_map_lookup_elem(&capture_scratch, &slot);
	if (!b)
		return 0;
	want = snaplen;
	if (want < b->h.link_hlen + hdr_len)
		want = b->h.link_hlen + hdr_len;
	n = b->src.avail < want ? b->src.avail : want;
	if (n > b->src.len)
		n = b->src.len;
	if (n > CAPTURE_MAX)
		n = CAPTURE_MAX;
	/* unique without an atomic that returns a value (BPF_FETCH: Linux 5.12, above our 5.10 floor): a
	 * per-CPU, per-slot count that only this slot's program on this CPU increments */
	b->seq++;
	b->h.id = (b->seq << 16) | ((bpf_get_smp_processor_id() & 0x7fff) << 1) | slot;
	b->h.len = b->src.len;
	dev = b->src.dev;	/* a plain load: CO-RE applies to the kernel's structs only */
	b->h.ifindex = BPF_CORE_READ(dev, ifindex);
	b->h.netns = netns;
	b->h.dev_type = BPF_CORE_READ(dev, type);
	b->h._pad = 0;
	bpf_core_read_str(b->h.ifname, sizeof(b->h.ifname), &dev->name);
	if (bpf_probe_read_kernel(b->data, n, b->src.start))
		n = 0;
	b->h.caplen = n;
	if (bpf_ringbuf_output(&captures, &b->h, sizeof(b->h) + n, 0)) {
		__u32 zero = 0;
		__u64 *v = bpf_map_lookup_elem(&capture_lost, &zero);

		if (v)
			__sync_fetch_and_add(v, 1);
		return 0;
	}
	return b->h.id;
}

#endif /* PYTRACER_CAPTURE_BPF_H */
