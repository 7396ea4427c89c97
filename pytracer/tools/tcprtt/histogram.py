"""A log2 histogram as text, in the layout of libbpf-tools' print_log2_hist: a row per bucket from the first
to the last non-empty one, `low -> high : count |****|`."""

def bucket_bounds(i):
    """(low, high) of log2 bucket i: 0 -> 1, 2 -> 3, 4 -> 7, ..."""
    high = (1 << (i + 1)) - 1
    low = (1 << (i + 1)) >> 1
    return (low - 1 if low == high else low), high


def render(slots, unit):
    """The histogram's rows (a list of lines, newline-terminated); only the header when it is empty."""
    last = max((i for i, v in enumerate(slots) if v), default=-1)
    wide = last > 32
    width, stars = (20, 20) if wide else (10, 40)
    rows = ["%*s%-*s : count    distribution\n" % (15 if wide else 5, "", 29 if wide else 19, unit)]
    top = max(slots) if last >= 0 else 0
    for i in range(last + 1):
        low, high = bucket_bounds(i)
        n = slots[i] * stars // top if top else 0
        rows.append("%*d -> %-*d : %-8d |%-*s|\n" % (width, low, width, high, slots[i], stars, "*" * n))
    return rows
