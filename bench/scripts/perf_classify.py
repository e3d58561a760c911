#!/usr/bin/env python3
"""Groups a daemon's perf samples (cpu-clock, with call chains) into where the time went:
the scheduler (and from where it was entered), each syscall, and each user-space crate; scaled
to µs per op with the daemon's CPU time per op that vufsd-bench --watch-pid measured.

    perf_classify.py perf.data run.json [perf-stat.txt SECONDS]

Notes for reading it on a VM: cpu-clock samples that land while interrupts are disabled are
attributed to where they are re-enabled, so the cost of a context switch shows up in
finish_task_switch / _raw_spin_unlock_irq ("sched: ..." here).
"""

import collections
import json
import re
import subprocess
import sys

CRATES = [
    ("vufsd::", "user: vufsd"),
    ("fuse_backend_rs", "user: fuse-backend-rs"),
    ("vm_memory", "user: vm-memory"),
    ("virtio_queue", "user: virtio-queue"),
    ("vhost_user_backend", "user: vhost-user-backend"),
    ("vhost::", "user: vhost"),
    ("virtiofsd", "user: virtiofsd"),
    ("arc_swap", "user: arc-swap"),
]


def syscall_name(syms):
    """The syscall a kernel call chain is in: the frame just above do_syscall_64."""
    if "do_syscall_64" not in syms:
        return None
    for s in reversed(syms[: syms.index("do_syscall_64")]):
        if s == "x64_sys_call":
            continue
        return re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_|ksys_|do_sys_|do_)", "", s)
    return None


def classify(frames):
    syms = [s for s, _ in frames]
    leaf, leaf_dso = frames[0]
    kernel = "kernel" in leaf_dso
    if kernel and (
        any(s.startswith(("finish_task_switch", "__schedule")) for s in syms[:6])
        or leaf.startswith("_raw_spin_unlock_irq")
    ):
        user = next((s for s, d in frames if "kernel" not in d), "?")
        if any(s.startswith("exit_to_user_mode") for s in syms):
            return f"sched: preempted on return from a syscall ({user[:30]})"
        name = syscall_name(syms)
        return f"sched: blocked in {name}" if name else "sched: other"
    if kernel:
        name = syscall_name(syms)
        if name:
            return "syscall " + name
        if any("page_fault" in s for s in syms):
            return "kernel: page faults"
        return "kernel: other"
    for needle, label in CRATES:
        if needle in leaf[:80]:
            return label
    if "libc" in leaf_dso:
        return "user: libc (malloc/free/memcpy, syscall wrappers)"
    return "user: other (std, hashbrown, ...)"


def samples(data):
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True, text=True, check=True
    ).stdout
    for block in out.split("\n\n"):
        frames = []
        for line in block.splitlines():
            m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if m:
                frames.append((m.group(1).split("+0x")[0], m.group(2)))
        if frames:
            yield frames


def main():
    data, run = sys.argv[1], sys.argv[2]
    summary = None
    for line in open(run, encoding="utf-8"):
        obj = json.loads(line)
        if "daemon_cpu_ms" in obj:
            summary = obj
    us = summary["daemon_cpu_ms"] * 1000 / summary["ops"] if summary and summary["ops"] else None
    cats, users, total = collections.Counter(), collections.Counter(), 0
    for frames in samples(data):
        total += 1
        c = classify(frames)
        cats[c] += 1
        if c.startswith("user"):
            users[frames[0][0][:100]] += 1
    if not total:
        sys.exit("perf_classify: no samples")
    head = f"{summary['workload']} depth {summary['depth']}: " if summary else ""
    print(f"{head}{summary['ops_per_s']:.0f} ops/s, daemon CPU {us:.2f} µs/op; {total} samples" if us else f"{total} samples")
    if len(sys.argv) > 4 and summary:
        st = open(sys.argv[3], encoding="utf-8").read()
        ops = summary["ops_per_s"] * float(sys.argv[4])

        def count(ev):
            m = re.search(r"([\d,]+)\s+" + re.escape(ev), st)
            return int(m.group(1).replace(",", "")) if m else 0

        print(
            f"per op: {count('raw_syscalls:sys_enter') / ops:.2f} syscalls, "
            f"{count('context-switches') / ops:.2f} context switches"
        )
    for c, n in cats.most_common():
        if n / total >= 0.005:
            cost = f"{us * n / total:8.2f} µs/op  " if us else ""
            print(f"  {100 * n / total:5.1f}%  {cost}{c}")
    print("  hottest user-space functions (self):")
    for s, n in users.most_common(10):
        print(f"  {100 * n / total:5.1f}%  {s}")


if __name__ == "__main__":
    main()
